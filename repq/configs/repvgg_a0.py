"""RepVGG-A0 recipe. ``imagenet``: Table S1 (RepQ supplementary); ``embedded`` (default): mnist5k.

Usage: ``python train.py --config=configs/repvgg_a0.py:imagenet``.
"""

from repq.configs import common

MODEL = "repvgg_a0"


def get_config(variant="embedded"):
    common.check_variant(variant, ("imagenet", "embedded"))
    config = common.recipe(
        model=MODEL, task="classification", dataset="imagenet2012", epochs=120, batch_size=256, loss="ce",
        label_smoothing=0.1, optimizer="sgd", schedule="warmup_cosine", warmup_epochs=5, weight_decay=1e-4,
        no_decay=("step", "bias", "norm"), fp_lr=0.1, qat_lr=0.01, merged8_lr=0.001,
        step_8bit_lr=0.01, step_4bit_lr=0.01)
    if variant == "embedded":
        common.embedded_classification(config, **common.EMBEDDED_CLASSIFICATION)
    return config
