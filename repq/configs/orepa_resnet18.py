"""OREPA-ResNet-18 recipe. ``imagenet``: Table S1 (RepQ supplementary); ``embedded`` (default): mnist5k.

Table S1's "5 epochs linear warmup" is OREPA's ``WarmupCosineAnnealingLR`` (warmup, then
cosine). OREPA exempts 'bias', 'bn' and 'prior' parameters from weight decay (the prior is
not trainable here). Its 2x bias LR is not reproduced.
"""

from repq.configs import common

MODEL = "orepa_resnet18"


def get_config(variant="embedded"):
    common.check_variant(variant, ("imagenet", "embedded"))
    config = common.recipe(
        model=MODEL, task="classification", dataset="imagenet2012", epochs=120, batch_size=256, loss="ce",
        label_smoothing=0.0, optimizer="sgd", schedule="warmup_cosine", warmup_epochs=5, weight_decay=1e-4,
        no_decay=("step", "bias", "norm"), fp_lr=0.1, qat_lr=0.01, merged8_lr=0.001,
        step_8bit_lr=1e-4, step_4bit_lr=1e-3)
    if variant == "embedded":
        common.embedded_classification(config, **common.EMBEDDED_MULTIBRANCH_RESNET)
    return config
