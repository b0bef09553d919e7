"""Building blocks for assembling merged kernels (HWIO) without ``tf.pad``.

Kernels are embedded into the k x k grid by broadcasting against constant
masks, which keeps the graph converter-friendly (a padded kernel breaks the
TFLite converter for large kernels) and differentiable.
"""

import numpy as np
from keras import ops


def center_mask(k, kh, kw):
    """``(k, k, 1, 1)`` float mask selecting where a ``(kh, kw)`` kernel sits centred in k x k."""
    rows = np.ones(k, np.float32) if kh == k else np.eye(k, dtype=np.float32)[k // 2]
    cols = np.ones(k, np.float32) if kw == k else np.eye(k, dtype=np.float32)[k // 2]
    if kh not in (1, k) or kw not in (1, k):
        raise ValueError(f"can only embed 1 or {k} wide kernels into {k}x{k}, got {kh}x{kw}.")
    return (rows[:, None] * cols[None, :])[:, :, None, None]


def embed_center(kernel, k):
    """Place a ``(kh, kw, I, O)`` kernel (kh, kw in {1, k}) at the centre of a k x k grid."""
    kh, kw = kernel.shape[0], kernel.shape[1]
    if kh == k and kw == k:
        return kernel
    return kernel * ops.convert_to_tensor(center_mask(k, kh, kw), dtype=kernel.dtype)


def identity_kernel(channels, groups, k):
    """HWIO ``(k, k, channels/groups, channels)`` kernel with conv(x, K) == x."""
    per_group = channels // groups
    kernel = np.zeros((k, k, per_group, channels), np.float32)
    for c in range(channels):
        kernel[k // 2, k // 2, c % per_group, c] = 1.0
    return kernel
