"""MSE observers (MQBench ``MSEObserver`` / ``EMAMSEObserver``, p = 2.4), numpy.

Candidates shrink the observed range: ``(min * (1 - 0.01 i), max * (1 - 0.01 i))``;
the one with the lowest ``mean |fq(x) - x|^p`` wins (per tensor: i = 0..94; per channel:
i = 0..79, each channel scored on its own). Activation tensors are scored on their leading
examples holding about ``MAX_SEARCH_ELEMENTS`` values (min/max use the full tensor) to keep
the search cheap on CPU; this subsampling is ours.
"""

import numpy as np

from repq.ptq.fake_quant import affine_qparams

P_NORM = 2.4
TENSOR_CANDIDATES = 95
CHANNEL_CANDIDATES = 80
MAX_SEARCH_ELEMENTS = 1 << 16
EMA_RATIO = 0.9


def _fake_quant_np(x, scale, zero_point, qmin, qmax):
    q = np.clip(np.floor(x / scale + 0.5) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def mse_range(x, qmin, qmax, per_channel=False, p=P_NORM):
    """Best ``(min, max)`` for ``x``; per channel along the last axis -> arrays ``(C,)``.

    Args:
      x: numpy array; per-channel kernels are HWIO / (in, out).
    """
    x = np.asarray(x, np.float32)
    if per_channel:
        flat = x.reshape(-1, x.shape[-1])
        lo, hi = flat.min(axis=0), flat.max(axis=0)
        candidates = CHANNEL_CANDIDATES
    else:
        # Whole leading examples: a stride that is a multiple of the channel count
        # would sample one channel of an NHWC tensor only.
        per_example = max(1, x[0].size) if x.ndim > 1 else 1
        flat = x[:max(1, MAX_SEARCH_ELEMENTS // per_example)].reshape(-1) if x.ndim > 1 else x.reshape(-1)
        lo, hi = np.float32(x.min()), np.float32(x.max())
        candidates = TENSOR_CANDIDATES
    best_lo, best_hi = np.copy(lo), np.copy(hi)
    best_err = np.full(np.shape(lo), np.inf)
    for i in range(candidates):
        c_lo, c_hi = lo * (1 - 0.01 * i), hi * (1 - 0.01 * i)
        scale, zero_point = affine_qparams(c_lo, c_hi, qmin, qmax)
        err = np.mean(np.abs(_fake_quant_np(flat, scale, zero_point, qmin, qmax) - flat) ** p, axis=0)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_lo, best_hi = np.where(better, c_lo, best_lo), np.where(better, c_hi, best_hi)
    return best_lo, best_hi


def weight_qparams(kernel, qmin, qmax):
    """Per-output-channel (last axis) MSE-searched ``(scale (C,), zero_point (C,))``."""
    lo, hi = mse_range(kernel, qmin, qmax, per_channel=True)
    return affine_qparams(lo, hi, qmin, qmax)


class EMAMSEObserver:
    """Per-tensor MSE search on every batch, EMA (ratio 0.9) of the chosen min and max."""

    def __init__(self, qmin, qmax):
        self.qmin, self.qmax = qmin, qmax
        self.min = self.max = None

    def update(self, x):
        """Observe one batch (numpy array of any shape)."""
        lo, hi = mse_range(x, self.qmin, self.qmax)
        if self.min is None:
            self.min, self.max = lo, hi
        else:
            self.min = EMA_RATIO * self.min + (1 - EMA_RATIO) * lo
            self.max = EMA_RATIO * self.max + (1 - EMA_RATIO) * hi

    def qparams(self):
        """``(scale, zero_point)`` scalars; raises if nothing was observed."""
        if self.min is None:
            raise ValueError("observer saw no data.")
        return affine_qparams(self.min, self.max, self.qmin, self.qmax)
