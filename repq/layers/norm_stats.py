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


def estimate_output_moments(inputs, kernel, bias, groups=1, moments=None):
    """BN estimation of the mean/variance of ``conv(inputs, kernel) + bias``.

    ``E[X*W]_o = sum_i E[X]_i * sum_hw W[h,w,i,o]`` (+ bias) and
    ``V[X*W]_o = sum_i V[X]_i * sum_hw W[h,w,i,o]^2`` (RepQ supplementary S2):
    input channels and positions are treated as uncorrelated and the padding
    border is neglected. The kernel is reduced over (h, w) first and then
    contracted with the input statistics (a matrix-vector product), which is
    what makes BNEst cheaper than a convolution.

    Args:
      inputs: ``(N, H, W, in)`` feature map (ignored when ``moments`` is given).
      kernel: ``(k, k, in/groups, out)``.
      bias: ``(out,)`` or None.
      groups: convolution groups.
      moments: optional precomputed ``input_moments(inputs)``.
    Returns:
      ``(mean, var)``, each ``(out,)``.
    """
    mean_in, var_in = input_moments(inputs) if moments is None else moments
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
