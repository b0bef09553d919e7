"""Losses of the recipes: cross entropy with label smoothing (classification), L1 (SR)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="repq")
class SparseCrossEntropy(keras.losses.Loss):
    """Cross entropy of logits ``(B, K)`` against integer labels ``(B,)``, with label smoothing.

    With smoothing ``e`` the target is ``(1 - e) * onehot + e / K`` (PyTorch/timm convention).
    """

    def __init__(self, label_smoothing=0.0, name="sparse_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        classes = ops.shape(y_pred)[-1]
        target = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), classes)
        if self.label_smoothing:
            target = target * (1.0 - self.label_smoothing) + self.label_smoothing / ops.cast(classes, "float32")
        return -ops.sum(target * ops.log_softmax(y_pred, axis=-1), axis=-1)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def build_loss(recipe):
    """``"ce"`` -> :class:`SparseCrossEntropy`; ``"l1"`` -> mean absolute error (ECBSR's L1)."""
    if recipe.loss == "ce":
        return SparseCrossEntropy(recipe.label_smoothing)
    if recipe.loss == "l1":
        return keras.losses.MeanAbsoluteError(name="l1")
    raise ValueError(f"Invalid value for `loss` in the recipe. Expected 'ce' or 'l1'. Received loss={recipe.loss!r}.")
