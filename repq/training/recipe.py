"""Turn a recipe (``configs/<model>.py``) into the optimizer of one training stage.

Stages: ``"fp"`` (float multi-branch training), ``"qat"`` (RepQ and merged LSQ,
LSQ steps with their own LR) and ``"merged8"`` (the tfmot 8-bit baseline, no
LSQ steps).
"""

from repq.training.optimizers import GroupedAdam, GroupedSGD
from repq.training.schedules import build_schedule

STAGES = ("fp", "qat", "merged8")


def check_stage(stage):
    if stage not in STAGES:
        raise ValueError(f"Invalid value for argument `stage`. Expected one of {STAGES}. Received stage={stage!r}.")


def stage_lr(recipe, stage):
    """Base learning rate of ``stage``."""
    check_stage(stage)
    return recipe.lr[stage]


def step_size_lr(recipe, weight_bits):
    """LR of the LSQ step sizes: Table S1's 8-bit value at 8 bits, the 4-bit value below."""
    return recipe.lr.step_8bit if weight_bits >= 8 else recipe.lr.step_4bit


def stage_epochs(recipe, stage):
    return recipe.fp_epochs if stage == "fp" else recipe.qat_epochs


def build_optimizer(recipe, stage, steps_per_epoch, epochs=None, weight_bits=None):
    """The stage's optimizer: schedule, momentum, weight decay and step-size LR.

    Args:
      recipe: recipe ConfigDict.
      stage: one of :data:`STAGES`.
      steps_per_epoch: iterations per epoch (schedules are stepped per iteration).
      epochs: stage length (default from the recipe).
      weight_bits: the run's weight bit width, picks the step-size LR ("qat" only).
    Returns:
      a :class:`GroupedSGD` or :class:`GroupedAdam`.
    """
    base_lr = stage_lr(recipe, stage)
    epochs = stage_epochs(recipe, stage) if epochs is None else epochs
    total = max(int(epochs * steps_per_epoch), 1)
    warmup = min(int(recipe.warmup_epochs * steps_per_epoch), total - 1)
    schedule = build_schedule(recipe.schedule, base_lr, total, warmup)
    multiplier = step_size_lr(recipe, weight_bits) / base_lr if stage == "qat" and weight_bits else 1.0
    kwargs = dict(learning_rate=schedule, step_lr_multiplier=multiplier, l2=recipe.weight_decay,
                  no_decay=tuple(recipe.no_decay))
    if recipe.optimizer == "sgd":
        return GroupedSGD(momentum=recipe.momentum, **kwargs)
    if recipe.optimizer == "adam":
        return GroupedAdam(epsilon=1e-8, **kwargs)  # PyTorch's Adam epsilon
    raise ValueError(f"Invalid value for `optimizer` in the recipe. Expected 'sgd' or 'adam'. "
                     f"Received optimizer={recipe.optimizer!r}.")
