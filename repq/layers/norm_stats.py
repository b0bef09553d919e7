"""BatchNorm folding, moving-statistics updates and BN estimation (BNEst).

Shapes: kernels HWIO ``(k, k, in/groups, out)``, per-channel vectors ``(out,)``,
feature maps NHWC.
"""

from keras import ops

from repq.distribute import replicated


def fold_norm(kernel, bias, norm, mean, var):
    """Fold ``norm`` (a BatchNormalization) with statistics ``mean``/``var`` into a conv.

    ``BN(conv(x, kernel) + bias) == conv(x, kernel') + bias'`` with
    ``kernel' = kernel * gamma/std`` (per output channel) and
    ``bias' = beta + (bias - mean) * gamma/std``, ``std = sqrt(var + eps)``.
    """
    scale = ops.rsqrt(var + norm.epsilon)
    if norm.scale:
        scale = scale * norm.gamma
    shift = -mean if bias is None else bias - mean
    new_bias = shift * scale
    if norm.center:
        new_bias = new_bias + norm.beta
    return kernel * scale, new_bias


def update_moving_moments(norm, mean, var):
    """Exponential moving average update exactly as ``BatchNormalization`` does it."""
    momentum = norm.momentum
    norm.moving_mean.assign(norm.moving_mean * momentum + ops.cast(mean, norm.moving_mean.dtype) * (1.0 - momentum))
    norm.moving_variance.assign(
        norm.moving_variance * momentum + ops.cast(var, norm.moving_variance.dtype) * (1.0 - momentum))


def batch_moments(x):
    """Per-channel mean and (biased) variance of an NHWC tensor over N, H, W: ``(C,), (C,)``.

    Under a ``tf.distribute`` strategy with several replicas the sums are
    all-reduced, so every replica folds the statistics of the *global* batch.
    """
    return ops.moments(x, axes=[0, 1, 2], synchronized=replicated())


def input_moments(inputs):
    """Per-channel mean and variance of the input over batch, height and width: ``(C,), (C,)``."""
    return batch_moments(inputs)


def tap_coverage(size, kernel_size, pad, stride, dtype="float32"):
    """``(out, k)`` 0/1 matrix of ``dtype``: whether tap ``t`` of a k-tap kernel at output position ``o``
    reads the input (``0 <= o*stride - pad + t < size``) rather than the zero padding.

    ``size`` is the input's height or width (a Python int or a scalar tensor); ``out`` is the
    output's, ``(size + 2*pad - k) // stride + 1``.
    """
    out = (size + 2 * pad - kernel_size) // stride + 1
    position = ops.arange(out)[:, None] * stride - pad + ops.arange(kernel_size)[None, :]
    return ops.cast(ops.logical_and(position >= 0, position < size), dtype)


def _per_tap(stat_in, kernel, groups):
    """``sum_i stat_in[i] * kernel[h, w, i, o]`` within each group: ``(k, k, out)``."""
    k_h, k_w, per_group_in, out = kernel.shape
    if groups == 1:
        return ops.einsum("i,hwio->hwo", stat_in, kernel)
    grouped = ops.reshape(kernel, (k_h, k_w, per_group_in, groups, out // groups))
    per_tap = ops.einsum("gi,hwigo->hwgo", ops.reshape(stat_in, (groups, per_group_in)), grouped)
    return ops.reshape(per_tap, (k_h, k_w, out))


def _padding_aware_moments(inputs, kernel, groups, mean_in, var_in, pad, stride):
    """Mean/variance over (N, H', W') of ``conv(pad(inputs), kernel)`` for inputs independent across
    channels and positions, counting at each output position only the taps inside the input.

    Per output position ``p``: ``m_p = sum_taps-inside E[X]*W``, ``v_p = sum_taps-inside V[X]*W^2``;
    over positions (law of total variance): ``mean = avg_p m_p``, ``var = avg_p v_p + var_p m_p``.
    """
    k_h, k_w = kernel.shape[0], kernel.shape[1]
    shape = ops.shape(inputs)
    rows = tap_coverage(shape[1], k_h, pad, stride, kernel.dtype)  # (H', k)
    cols = tap_coverage(shape[2], k_w, pad, stride, kernel.dtype)  # (W', k)
    mean_p = ops.einsum("ah,bw,hwo->abo", rows, cols, _per_tap(mean_in, kernel, groups))
    var_p = ops.einsum("ah,bw,hwo->abo", rows, cols, _per_tap(var_in, ops.square(kernel), groups))
    mean = ops.mean(mean_p, axis=(0, 1))
    return mean, ops.mean(var_p, axis=(0, 1)) + ops.mean(ops.square(mean_p - mean), axis=(0, 1))


def estimate_output_moments(inputs, kernel, bias, groups=1, moments=None, padding=None):
    """BN estimation of the mean/variance of ``conv(inputs, kernel) + bias``.

    ``E[X*W]_o = sum_i E[X]_i * sum_hw W[h,w,i,o]`` (+ bias) and
    ``V[X*W]_o = sum_i V[X]_i * sum_hw W[h,w,i,o]^2`` (RepQ supplementary S2):
    input channels and positions are treated as uncorrelated and the padding
    border is neglected. The kernel is reduced over (h, w) first and then
    contracted with the input statistics (a matrix-vector product), which is
    what makes BNEst cheaper than a convolution.

    ``padding=(pad, stride)`` counts the zero padding instead: at each output position only the
    taps that read the input contribute, and the spread of the per-position means adds to the
    variance (``_padding_aware_moments``). On small maps the border is most of the map (a 3x3
    kernel on a 1x1 input reads only its centre tap), where the formula above is far off.

    Args:
      inputs: ``(N, H, W, in)`` feature map (only its shape is read when ``moments`` is given).
      kernel: ``(k, k, in/groups, out)``.
      bias: ``(out,)`` or None.
      groups: convolution groups.
      moments: optional precomputed ``input_moments(inputs)``.
      padding: None (the formula above) or ``(pad, stride)`` of the convolution: symmetric zero
        padding ``pad`` pixels, then a 'valid' conv with ``stride``.
    Returns:
      ``(mean, var)``, each ``(out,)``.
    """
    mean_in, var_in = input_moments(inputs) if moments is None else moments
    if padding is not None:
        mean, var = _padding_aware_moments(inputs, kernel, groups, mean_in, var_in, *padding)
        return (mean if bias is None else mean + bias), var
    k_sum = ops.sum(kernel, axis=(0, 1))            # (in/g, out)
    k_sq_sum = ops.sum(ops.square(kernel), axis=(0, 1))
    if groups == 1:
        mean = ops.matmul(mean_in[None, :], k_sum)[0]
        var = ops.matmul(var_in[None, :], k_sq_sum)[0]
    else:
        per_group_in = k_sum.shape[0]
        out = k_sum.shape[1]
        k_sum = ops.reshape(k_sum, (per_group_in, groups, out // groups))
        k_sq_sum = ops.reshape(k_sq_sum, (per_group_in, groups, out // groups))
        mean_g = ops.reshape(mean_in, (groups, per_group_in))
        var_g = ops.reshape(var_in, (groups, per_group_in))
        mean = ops.reshape(ops.einsum("gi,igo->go", mean_g, k_sum), (out,))
        var = ops.reshape(ops.einsum("gi,igo->go", var_g, k_sq_sum), (out,))
    if bias is not None:
        mean = mean + bias
    return mean, var
