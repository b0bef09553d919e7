"""AdaRound (Nagel et al. 2020): rectified sigmoid, init, regulariser and β schedule.

Constants and formulas from SPEC Part C §3 (MQBench ``AdaRoundFakeQuantize``).
"""

import keras
import numpy as np
import tensorflow as tf

GAMMA, ZETA = -0.1, 1.1
BETA_START, BETA_END = 20.0, 2.0
WARM_UP = 0.2


def rectified_sigmoid(alpha):
    """``h(α) = clip(sigmoid(α) (ζ - γ) + γ, 0, 1)`` in [0, 1]."""
    return tf.clip_by_value(tf.sigmoid(alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def init_alpha(kernel, scale):
    """α with ``h(α) = W/s - floor(W/s)``, so the soft weight starts at W. Same shape as ``kernel``."""
    v = np.asarray(kernel, np.float64) / np.asarray(scale, np.float64)
    rest = v - np.floor(v)
    return (-np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)).astype(np.float32)


def soft_integer(kernel, scale, alpha):
    """``floor(W/s) + h(α)``: the soft integer part before zero point and clipping."""
    return tf.floor(kernel / scale) + rectified_sigmoid(alpha)


def hard_integer(kernel, scale, alpha):
    """``floor(W/s) + 1[α >= 0]``."""
    return tf.floor(kernel / scale) + tf.cast(alpha >= 0.0, kernel.dtype)


def beta_schedule(t, max_count, warm_up=WARM_UP, start=BETA_START, end=BETA_END):
    """Linear temperature decay: ``start`` before ``warm_up * T``, then linearly to ``end`` at T.

    ``t`` is the 1-based iteration (python number or scalar tensor).
    """
    t = tf.cast(t, tf.float32)
    warm = warm_up * max_count
    frac = tf.maximum(0.0, 1.0 - (t - warm) / max(max_count - warm, 1.0))
    return tf.where(t < warm, start, end + (start - end) * frac)


def round_loss(alphas, beta):
    """``Σ (1 - |2 h(α) - 1|^β)`` over every α tensor (before λ)."""
    return tf.add_n([tf.reduce_sum(1.0 - tf.pow(tf.abs(2.0 * rectified_sigmoid(a) - 1.0), beta))
                     for a in alphas])


class SoftRounding:
    """AdaRound's learned rounding as a weight quantizer's ``rounding`` (:class:`repq.quantizers.LSQQuantizer`).

    While ``active`` (1.0) the quantizer gives ``clip(floor(W/s) + h(α), qmin, qmax) s``, else its
    round-to-nearest value. ``alpha`` has the kernel's shape and is what reconstruction trains.
    """

    def __init__(self, kernel_shape):
        self.alpha = keras.Variable(np.zeros(kernel_shape, np.float32), name="alpha")
        self.active = keras.Variable(0.0, trainable=False, name="soft_rounding_active")

    def __call__(self, kernel, quantizer):
        step = quantizer.positive_step()

        def soft():
            return tf.clip_by_value(soft_integer(kernel, step, self.alpha), quantizer.qmin, quantizer.qmax) * step

        return tf.cond(self.active > 0, soft, lambda: quantizer.fake_quant(kernel))

    def start(self, kernel, step):
        """α with ``h(α) = W/s - floor(W/s)`` (the soft kernel starts at W); soft rounding on."""
        self.alpha.assign(init_alpha(keras.ops.convert_to_numpy(kernel), keras.ops.convert_to_numpy(step)))
        self.active.assign(1.0)

    def stop(self):
        """Soft rounding off: the quantizer rounds to nearest again."""
        self.active.assign(0.0)

    def hard_kernel(self, kernel, quantizer):
        """The kernel rounded by α's sign, ``clip(floor(W/s) + 1[α >= 0]) s``."""
        step = quantizer.positive_step()
        return tf.clip_by_value(hard_integer(kernel, step, self.alpha), quantizer.qmin, quantizer.qmax) * step
