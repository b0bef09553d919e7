"""Super-resolution metrics, ECBSR convention (SPEC 4.4)."""

import keras
import tensorflow as tf


def psnr_y(sr, hr, scale):
    """Per-image PSNR in dB of Y images in 0..255 -> float32 tf.Tensor (B,).

    sr, hr: (B, H, W, C) (C = 1 for Y), same shape. Shaves `scale` pixels from every
    border of both, clamps sr to [0, 255], no rounding, then
    PSNR = -10 log10(mean(((sr - hr) / 255)^2)). Identical images give +inf (no cap).
    """
    sr = tf.convert_to_tensor(sr, tf.float32)[:, scale:-scale, scale:-scale]
    hr = tf.convert_to_tensor(hr, tf.float32)[:, scale:-scale, scale:-scale]
    error = (tf.clip_by_value(sr, 0.0, 255.0) - hr) / 255.0
    mse = tf.reduce_mean(tf.square(error), axis=[1, 2, 3])
    return -10.0 * tf.math.log(mse) / tf.math.log(10.0)


@keras.saving.register_keras_serializable(package="repq")
class PSNR(keras.metrics.Metric):
    """Mean over images of `psnr_y` (y_true = HR, y_pred = SR, both in 0..255)."""

    def __init__(self, scale, name="psnr", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = scale
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add the per-image PSNRs of one batch (sample_weight: optional (B,) weights)."""
        values = psnr_y(y_pred, y_true, self.scale)
        weights = tf.ones_like(values) if sample_weight is None else tf.cast(
            tf.reshape(sample_weight, [-1]), tf.float32)
        self.total.assign_add(tf.reduce_sum(values * weights))
        self.count.assign_add(tf.reduce_sum(weights))

    def result(self):
        return tf.math.divide_no_nan(self.total, self.count)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}
