"""Learning-rate schedules of the RepQ recipes (Table S1), stepped per iteration.

Each is a serializable ``keras.optimizers.schedules.LearningRateSchedule``:
``schedule(step) -> lr`` with ``step`` the optimizer's iteration counter.
"""

import math

import keras
from keras import ops

SCHEDULES = ("warmup_cosine", "cosine", "constant")


@keras.saving.register_keras_serializable(package="repq")
class WarmupCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``base_lr`` over ``warmup_steps``, then cosine decay to 0.

    ``lr(t) = base_lr * (t + 1) / warmup_steps`` for ``t < warmup_steps``, then
    ``0.5 * base_lr * (1 + cos(pi * (t - warmup_steps) / (total_steps - warmup_steps)))``,
    held at 0 after ``total_steps``. ``warmup_steps=0`` is plain cosine
    (PyTorch ``CosineAnnealingLR(eta_min=0)`` stepped per iteration).
    """

    def __init__(self, base_lr, total_steps, warmup_steps=0):
        if total_steps <= warmup_steps:
            raise ValueError(f"`total_steps` must exceed `warmup_steps`. Received total_steps={total_steps}, "
                             f"warmup_steps={warmup_steps}.")
        self.base_lr, self.total_steps, self.warmup_steps = float(base_lr), int(total_steps), int(warmup_steps)

    def __call__(self, step):
        t = ops.cast(step, "float32")
        warm = self.base_lr * (t + 1.0) / max(self.warmup_steps, 1)
        progress = ops.clip((t - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0)
        cosine = 0.5 * self.base_lr * (1.0 + ops.cos(math.pi * progress))
        return ops.where(t < self.warmup_steps, warm, cosine)

    def get_config(self):
        return dict(base_lr=self.base_lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps)


@keras.saving.register_keras_serializable(package="repq")
class ConstantLR(keras.optimizers.schedules.LearningRateSchedule):
    """``lr(t) = base_lr`` (ECBSR's Adam has no scheduler)."""

    def __init__(self, base_lr):
        self.base_lr = float(base_lr)

    def __call__(self, step):
        return ops.full((), self.base_lr, "float32")

    def get_config(self):
        return dict(base_lr=self.base_lr)


def build_schedule(name, base_lr, total_steps, warmup_steps=0):
    """``"warmup_cosine" | "cosine" | "constant"`` -> schedule (steps are iterations)."""
    if name == "warmup_cosine":
        return WarmupCosineDecay(base_lr, total_steps, warmup_steps)
    if name == "cosine":
        return WarmupCosineDecay(base_lr, total_steps, 0)
    if name == "constant":
        return ConstantLR(base_lr)
    raise ValueError(f"Invalid value for argument `schedule`. Expected one of {SCHEDULES}. Received schedule={name!r}.")
