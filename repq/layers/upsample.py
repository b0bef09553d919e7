"""The ECBSR output stage: add the low-resolution input, then pixel-shuffle."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="repq")
class PixelShuffleResidual(keras.layers.Layer):
    """``depth_to_space(features + lr, r)`` for single-colour (Y) super-resolution.

    Args:
      scale: upscaling factor r.
    Call args:
      features: ``(N, H, W, r*r)`` backbone output.
      lr: ``(N, H, W, 1)`` low-resolution input, broadcast onto all r*r channels
        (so the residual is the nearest-upsampled input).
    Returns ``(N, rH, rW, 1)`` (``keras.ops`` has no depth_to_space, hence tf). For one colour channel TF's ``depth_to_space``
    and PyTorch's ``PixelShuffle`` use the same channel order.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = int(scale)

    def call(self, features, lr):
        if features.shape[-1] != self.scale ** 2 or lr.shape[-1] != 1:
            raise ValueError("PixelShuffleResidual expects r*r feature channels and a 1-channel input, "
                             f"got {features.shape[-1]} and {lr.shape[-1]}.")
        return tf.nn.depth_to_space(features + lr, self.scale)

    def compute_output_shape(self, features_shape, lr_shape=None):
        n, h, w, _ = features_shape
        r = self.scale
        return (n, None if h is None else h * r, None if w is None else w * r, 1)

    def get_config(self):
        config = super().get_config()
        config["scale"] = self.scale
        return config
