"""SGD / Adam with parameter groups: a separate LR for LSQ step sizes, selective weight decay.

Keras has no PyTorch-style parameter groups. These optimizers classify every
trainable variable once, at ``build`` (by its name, see :func:`variable_kind`),
and in ``update_step`` (called per variable) they

* multiply the learning rate by ``step_lr / lr`` for step sizes. Scaling the
  *learning rate* (not the gradient) is exact for every optimizer, Adam
  included: PyTorch's schedulers scale each group's base LR by the same factor,
  so the ratio of the two groups stays ``step_lr / lr`` at every iteration;
* add PyTorch-style coupled L2 weight decay ``g + wd * w`` (``torch.optim.SGD``
  / ``Adam`` ``weight_decay``, applied before momentum) to the variables whose
  kind is not listed in ``no_decay``.

Variable kinds: ``"step"`` (LSQ step sizes), ``"bias"``, ``"norm"``
(BatchNorm gamma/beta), ``"prelu"`` (PReLU slopes), ``"weight"`` (the rest).
"""

import keras
from keras import ops

KINDS = ("step", "bias", "norm", "prelu", "weight")


def variable_kind(variable):
    """The kind of a trainable variable, from its name and path."""
    name, path = variable.name, getattr(variable, "path", variable.name)
    if name == "step":
        return "step"
    if name == "bias" or name.endswith("_bias"):
        return "bias"
    if name in ("gamma", "beta"):
        return "norm"
    if name == "alpha" and "prelu" in path:
        return "prelu"
    return "weight"


class ParamGroupsMixin:
    """Adds ``step_lr_multiplier``, ``l2`` and ``no_decay`` to a Keras optimizer.

    Args:
      step_lr_multiplier: LR of the step sizes divided by the LR of the rest.
      l2: coupled weight decay coefficient (0 disables it).
      no_decay: variable kinds (:data:`KINDS`) exempt from weight decay (step sizes
        never decay).
    """

    def __init__(self, *args, step_lr_multiplier=1.0, l2=0.0, no_decay=("step",), **kwargs):
        super().__init__(*args, **kwargs)
        unknown = set(no_decay) - set(KINDS)
        if unknown:
            raise ValueError(f"Invalid value for argument `no_decay`. Expected kinds from {KINDS}. "
                             f"Received no_decay={tuple(no_decay)}.")
        self.step_lr_multiplier, self.l2, self.no_decay = float(step_lr_multiplier), float(l2), tuple(no_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        kinds = [variable_kind(v) for v in variables]
        self._lr_multipliers = [self.step_lr_multiplier if k == "step" else 1.0 for k in kinds]
        self._decays = [0.0 if k == "step" or k in self.no_decay else self.l2 for k in kinds]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        decay = self._decays[index]
        if decay:
            gradient = gradient + ops.cast(decay, variable.dtype) * variable
        multiplier = self._lr_multipliers[index]
        if multiplier != 1.0:
            learning_rate = learning_rate * multiplier
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(step_lr_multiplier=self.step_lr_multiplier, l2=self.l2, no_decay=list(self.no_decay))
        return config


@keras.saving.register_keras_serializable(package="repq")
class GroupedSGD(ParamGroupsMixin, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` with parameter groups (see module docstring)."""


@keras.saving.register_keras_serializable(package="repq")
class GroupedAdam(ParamGroupsMixin, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with parameter groups (see module docstring)."""
