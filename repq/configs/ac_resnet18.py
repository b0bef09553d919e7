"""AC-ResNet-18 recipe. ``imagenet``: Table S1 (RepQ supplementary); ``embedded`` (default): mnist5k.

ACNet's ``do_acnet.py`` applies weight decay to biases and BN too (SPEC A.2.2), so only
the LSQ step sizes are exempt.

``embedded``: the BNEst FP model trains at half the FP LR (``bnest_fp_lr``). At the shared 1e-3 it
underfits (training accuracy about 98 % after 48 epochs) and ends at the 98.5 % bar or below it in some
seeds; docs/training.md, "Is every baseline converged?".
"""

from repq.configs import common

MODEL = "ac_resnet18"


def get_config(variant="embedded"):
    common.check_variant(variant, ("imagenet", "embedded"))
    config = common.recipe(
        model=MODEL, task="classification", dataset="imagenet2012", epochs=100, batch_size=256, loss="ce",
        label_smoothing=0.0, optimizer="sgd", schedule="cosine", warmup_epochs=0, weight_decay=1e-4,
        no_decay=("step",), fp_lr=0.1, qat_lr=0.01, merged8_lr=0.001, step_8bit_lr=1e-4, step_4bit_lr=1e-3)
    if variant == "embedded":
        common.embedded_classification(config, **common.EMBEDDED_MULTIBRANCH_RESNET, bnest_fp_lr=5e-4)
    return config
