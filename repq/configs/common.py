"""Shared recipe builder: Table S1 (RepQ supplementary) fields plus the embedded defaults.

A recipe is an ``ml_collections.ConfigDict``:

* ``model``, ``task`` ("classification" | "super_resolution"), ``data`` (dataset name,
  ``scale``, ``patch_size``, ``repeat_patches``, ``limit_train``/``limit_test`` examples),
* ``fp_epochs`` and ``qat_epochs`` (Table S1: the QAT stage keeps the FP epochs),
  ``bnest_fp_epochs`` (FP epochs of a ``--bnest`` model; None: ``fp_epochs``),
  ``bnest_fp_lr`` (optional, absent: ``lr.fp``): the FP LR of a ``--bnest`` model; absent unless a recipe
  sets it, so that run directories of earlier versions stay resumable,
  ``steps_per_epoch`` (None: the whole training split), ``batch_size``,
* ``loss`` ("ce" | "l1"), ``label_smoothing``,
* ``optimizer`` ("sgd" | "adam"), ``momentum``, ``schedule`` ("warmup_cosine" | "cosine"
  | "constant"), ``warmup_epochs``, ``weight_decay``, ``no_decay`` (variable kinds),
* ``lr``: ``fp``, ``qat`` (RepQ and merged LSQ), ``merged8`` (tfmot 8-bit baseline),
  ``step_8bit`` and ``step_4bit`` (LSQ step sizes; ``step_4bit`` for any run below 8 bits),
* ``freeze_bn_after``: QAT epochs after which RepQ stops folding the branch BNs with batch
  statistics and trains on the moving statistics, as deployed (``repq.callbacks.FreezeNormStatistics``;
  None: batch statistics throughout, as Table S1); ``bnest_freeze_bn_after``: the same for
  ``--bnest`` runs (train.py puts it in ``freeze_bn_after``),
* ``bn_variance_floor`` (optional, absent: False, RepQ-BN as specified): RepQ QAT folds each branch BN
  with ``max(batch, moving)`` variance in training (``repq.quantize_model(bn_variance_floor=True)``);
  absent by default so that run directories of earlier versions stay resumable,
* ``select_best``: keep the weights of the best validation epoch (classification) or the
  last epoch (ECBSR),
* ``stem``: the zoo model's stride layout, ``"auto"`` (small-image layout below 64 px),
  ``"imagenet"``, ``"small"`` or ``"half"`` (``repq.models.registry.stride_layout``).

Optional (absent by default): ``quantize``, per-layer choices of the RepQ QAT model that
``train.py`` passes to ``repq.quantize_model`` as a ``repq.QuantizeConfig``:
``layers`` (layer name or glob -> bits for weights and input, or ``[weight_bits, act_bits]``) and
``exclude`` (patterns of layers left float), e.g.
``config.quantize = ml_collections.ConfigDict(dict(layers={"ecb_body*": 6}, exclude=[]))``.
"""

import ml_collections

VARIANTS = ("imagenet", "div2k", "embedded")


def recipe(*, model, task, dataset, epochs, batch_size, loss, label_smoothing, optimizer, schedule,
           warmup_epochs, weight_decay, no_decay, fp_lr, qat_lr, merged8_lr, step_8bit_lr, step_4bit_lr):
    """A recipe ConfigDict with the given Table-S1-style values (see module docstring)."""
    config = ml_collections.ConfigDict()
    config.model = model
    config.task = task
    config.data = ml_collections.ConfigDict(dict(
        name=dataset, scale=2, patch_size=ml_collections.FieldReference(None, field_type=int),
        repeat_patches=ml_collections.FieldReference(None, field_type=int),
        limit_train=ml_collections.FieldReference(None, field_type=int),
        limit_test=ml_collections.FieldReference(None, field_type=int)))
    config.fp_epochs = epochs
    config.qat_epochs = epochs
    config.bnest_fp_epochs = ml_collections.FieldReference(None, field_type=int)
    config.steps_per_epoch = ml_collections.FieldReference(None, field_type=int)
    config.batch_size = batch_size
    config.loss = loss
    config.label_smoothing = label_smoothing
    config.optimizer = optimizer
    config.momentum = 0.9
    config.schedule = schedule
    config.warmup_epochs = warmup_epochs
    config.weight_decay = weight_decay
    config.no_decay = no_decay
    config.lr = ml_collections.ConfigDict(dict(fp=fp_lr, qat=qat_lr, merged8=merged8_lr,
                                               step_8bit=step_8bit_lr, step_4bit=step_4bit_lr))
    config.freeze_bn_after = ml_collections.FieldReference(None, field_type=int)
    config.bnest_freeze_bn_after = ml_collections.FieldReference(None, field_type=int)
    config.select_best = task == "classification"
    config.stem = "auto"
    return config


def check_variant(variant, allowed):
    """Raise a clear error for an unknown recipe variant."""
    if variant not in allowed:
        raise ValueError(f"unknown recipe variant {variant!r}; choose one of: {', '.join(allowed)}.")


def embedded_classification(config, *, fp_epochs, qat_epochs, batch_size, optimizer, fp_lr, label_smoothing,
                            weight_decay, stem, steps_per_epoch=None, bnest_fp_epochs=None,
                            bnest_freeze_bn_after=None, bnest_fp_lr=None):
    """Shrink a Table S1 classification recipe to mnist5k on a 2-core CPU.

    The optimizer and FP LR are replaced; every other LR of the recipe (QAT, merged 8-bit,
    step sizes) is scaled by the same factor, so Table S1's ratios between them are kept.
    Warmup is at most one epoch. Why each value: docs/training.md ("Why training was slow").
    """
    factor = fp_lr / config.lr.fp
    for key in config.lr:
        config.lr[key] = config.lr[key] * factor
    config.data.name = "mnist5k"
    config.fp_epochs, config.qat_epochs = fp_epochs, qat_epochs
    config.bnest_fp_epochs = bnest_fp_epochs
    config.bnest_freeze_bn_after = bnest_freeze_bn_after
    if bnest_fp_lr is not None:
        config.bnest_fp_lr = bnest_fp_lr
    config.batch_size = batch_size
    config.steps_per_epoch = steps_per_epoch
    config.optimizer = optimizer
    config.label_smoothing = label_smoothing
    config.weight_decay = weight_decay
    config.warmup_epochs = min(config.warmup_epochs, 1)
    config.stem = stem
    return config

# mnist5k on a 2-core CPU, measured in docs/training.md ("Why training was slow"): Adam (SGD at 0.1
# needs far more steps to leave chance level), whole epochs of the 4,000 training digits (63 steps
# of 64), the "half" stride layout for RepVGG and MobileNetV2 (4x fewer FLOPs than the small-image
# layout; the ImageNet layout's 1x1 maps learn slowly and BNEst collapses there). ResNets override
# the layout with "imagenet" (their "half" layout is 4x the FLOPs of RepVGG's).
# BNEst QAT freezes the (estimated) BN statistics after its first epoch: 4-bit merged RepVGG kernels
# start at chance, batch-statistics folding recovers in that epoch, and frozen statistics then train the
# deployed kernel: the validation curve stops swinging (RepVGG-A0, 3 seeds). RepQ-BN keeps batch
# statistics (Table S1): freezing them after one epoch changed its 4-bit top-1 by less than the noise
# (RepVGG-A0, 3 seeds). docs/training.md, "Freezing the BN statistics in QAT".
# 6 QAT epochs: at 3 the 4-bit models still gained (training accuracy rising, RepQ-BNEst 1.1-1.6 pt
# below FP); docs/training.md, "How the QAT budget moves the 4-bit drop".
EMBEDDED_CLASSIFICATION = dict(fp_epochs=16, qat_epochs=6, batch_size=64, optimizer="adam", fp_lr=1e-3,
                               label_smoothing=0.0, weight_decay=0.0, stem="half", bnest_freeze_bn_after=1)
RESNET_FP_EPOCHS = 30
EMBEDDED_RESNET = dict(EMBEDDED_CLASSIFICATION, stem="imagenet", fp_epochs=RESNET_FP_EPOCHS)
# The multi-branch ResNets with BNEst stay near chance for their first epochs in the ImageNet layout
# and still rise at 30 epochs (AC-ResNet-18: 97.6 % at 30, benchmarks/results/zoo_fp.md); 48 epochs.
EMBEDDED_MULTIBRANCH_RESNET = dict(EMBEDDED_RESNET, bnest_fp_epochs=48)
# skimage_sr: 11 training images x 64 patches = 22 steps of 32 per epoch. FP PSNR still rises after
# 16 epochs and flattens by 64 (benchmarks/results/zoo_fp.md, then and now): a QAT run from the
# 16-epoch model went on training it and ended above its FP.
EMBEDDED_SR = dict(fp_epochs=64, qat_epochs=16)
