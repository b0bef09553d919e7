"""ECBSR-M4C16 (x2) recipe. ``div2k``: Table S1 (RepQ supplementary); ``embedded`` (default): skimage_sr.

Table S1 / ECBSR ``train.py``: Adam (PyTorch betas, eps 1e-8), constant LR 5e-4, L1 loss,
batch 32, 1000 epochs of 64 patches per DIV2K image, HR patch 128 (x2); last checkpoint.
"""

from repq.configs import common

MODEL = "ecbsr_m4c16"


def get_config(variant="embedded"):
    common.check_variant(variant, ("div2k", "embedded"))
    config = common.recipe(
        model=MODEL, task="super_resolution", dataset="div2k", epochs=1000, batch_size=32, loss="l1",
        label_smoothing=0.0, optimizer="adam", schedule="constant", warmup_epochs=0, weight_decay=0.0,
        no_decay=("step", "bias", "norm", "prelu"), fp_lr=5e-4, qat_lr=5e-4, merged8_lr=5e-4,
        step_8bit_lr=5e-4, step_4bit_lr=5e-4)
    config.data.patch_size = 128
    config.data.repeat_patches = 64
    if variant == "embedded":
        config.data.name = "skimage_sr"
        config.data.patch_size = 64
        config.fp_epochs, config.qat_epochs = common.EMBEDDED_SR["fp_epochs"], common.EMBEDDED_SR["qat_epochs"]
    return config
