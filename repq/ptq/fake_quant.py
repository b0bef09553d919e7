"""Affine (asymmetric) fake quantization with an integer zero point, and QDrop mixing.

Grid (SPEC Part C §1): ``q = clip(round(x/s) + z, qmin, qmax)``, ``x_hat = (q - z) * s``
with ``[qmin, qmax] = [0, 2^b - 1]``. Rounding and the straight-through estimator are
``repq.quantizers.round_ste`` (half-up, so ``x_hat`` matches TF's fake-quant ops); the
step gets plain STE gradients (no LSQ factor), as MQBench's ``QDropFakeQuantize``.
"""

import keras
import numpy as np
from keras import ops

from repq.quantizers import integer_range, round_ste

SCALE_EPS = float(np.finfo(np.float32).eps)


def affine_range(bits):
    """``(qmin, qmax)`` of the asymmetric ``bits``-bit grid, ``(0, 2^b - 1)``; 2..8 bits."""
    return integer_range(bits, signed=False)


def affine_qparams(x_min, x_max, qmin, qmax):
    """(scale, zero_point) covering ``[min(x_min, 0), max(x_max, 0)]`` (torch ``_ObserverBase``).

    Works elementwise on numpy arrays (per channel) or scalars; zero points are integers.
    """
    lo = np.minimum(np.asarray(x_min, np.float64), 0.0)
    hi = np.maximum(np.asarray(x_max, np.float64), 0.0)
    scale = np.maximum((hi - lo) / (qmax - qmin), SCALE_EPS)
    zero_point = np.clip(qmin - np.floor(lo / scale + 0.5), qmin, qmax)
    return scale.astype(np.float32), zero_point.astype(np.float32)


def affine_fake_quant(x, scale, zero_point, qmin, qmax):
    """``(clip(round_ste(x/s) + z, qmin, qmax) - z) * s``; ``s``, ``z`` broadcast on the last axis.

    Gradients: ``dx`` = 1 inside the range; ``ds`` = ``round(x/s) - x/s`` inside,
    ``qmin - z`` / ``qmax - z`` when clipped.
    """
    return (ops.clip(round_ste(x / scale) + zero_point, qmin, qmax) - zero_point) * scale


def quantize_to_int(x, scale, zero_point, qmin, qmax):
    """Integer codes ``clip(round(x/s) + z, qmin, qmax)`` (float dtype, integral values)."""
    return ops.clip(ops.floor(x / scale + 0.5) + zero_point, qmin, qmax)


def drop_mix(x_quant, x_float, prob, seed=None):
    """QDrop: each element keeps ``x_quant`` with probability ``prob``, else ``x_float``.

    A fresh mask per call; ``seed``: a ``keras.random.SeedGenerator`` (deterministic stream).
    """
    noise = keras.random.uniform(ops.shape(x_quant), seed=seed)
    return ops.where(noise < prob, x_quant, x_float)
