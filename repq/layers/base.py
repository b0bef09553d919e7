"""The structural re-parametrization contract shared by every rep block.

A rep block is a k x k convolution (stride s, groups g, symmetric zero padding
k//2) that is *trained* as several branches and *deployed* as one convolution.
Subclasses describe their branches; this base class turns them into

* the multi-branch forward pass (``call`` with ``norm_mode="bn"``),
* ``merged_kernel_and_bias()``: one HWIO kernel ``(k, k, in/g, out)`` and a bias
  ``(out,)``, computed *differentiably* from the branch variables, with each
  branch's BatchNorm folded in using moving statistics (inference), batch
  statistics (RepQ-BN) or statistics estimated from the input (BN estimation),
* ``deploy_layer()``: a plain :class:`PaddedConv2D` (plus activation) holding the
  merged weights.

Subclass contract (shapes NHWC / HWIO):

``build_branches(in_channels)``
    create the branch variables and ``self.norms``: one ``BatchNormalization`` or
    ``None`` per branch, in branch order.
``branch_kernels() -> list[(kernel (k,k,in/g,out), bias (out,) | None)]``
    each branch as a full-size k x k kernel, *before* its norm.
``branch_outputs(x) -> list[(N,H',W',out)]``
    each branch run natively on the un-padded input ``x``, before its norm.
"""

import keras
from keras import ops

from repq.layers.norm_stats import (batch_moments, estimate_output_moments, fold_norm, input_moments,
                                    update_moving_moments)
from repq.layers.padded_conv import PaddedConv2D, conv2d, symmetric_pad

ACTIVATIONS = (None, "relu", "relu6", "prelu")
NORM_MODES = ("bn", "bnest")


def torch_default_init():
    """PyTorch's Conv2d/Linear default weight init, U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def batch_norm(name):
    """A BatchNormalization with PyTorch's constants (momentum 0.1, eps 1e-5).

    ``synchronized=True``: under a multi-replica strategy its batch statistics
    are those of the global batch, like RepQ-BN's and BNEst's (a no-op otherwise).
    """
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=True, name=name)


class RepConvBlock(keras.layers.Layer):
    """Base class of all rep blocks; see the module docstring.

    Args:
      filters: output channels.
      kernel_size: odd int k of the merged kernel.
      strides: 1 or 2.
      groups: convolution groups of the merged kernel.
      activation: None, "relu", "relu6" or "prelu" (per channel, init 0.25),
        applied after the branch sum.
      norm_mode: "bn" (BatchNorm with batch statistics in training) or "bnest"
        (BN estimation: statistics derived from the input's mean/variance).
      bnest_padding_aware: with ``norm_mode="bnest"``, estimate with the zero
        padding counted (``estimate_output_moments(padding=...)``) instead of
        the spec's formula, which neglects the border (small feature maps).
    """

    def __init__(self, filters, kernel_size=3, strides=1, groups=1,
                 activation=None, norm_mode="bn", bnest_padding_aware=False, **kwargs):
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        if activation == "linear":
            activation = None
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")
        if norm_mode not in NORM_MODES:
            raise ValueError(f"norm_mode must be one of {NORM_MODES}, got {norm_mode!r}.")
        if bnest_padding_aware and norm_mode != "bnest":
            raise ValueError(f"bnest_padding_aware=True applies to BN estimation: pass norm_mode='bnest' "
                             f"(got {norm_mode!r}).")
        if filters % groups:
            raise ValueError(f"filters={filters} is not divisible by groups={groups}.")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.groups = int(groups)
        self.activation = activation
        self.norm_mode = norm_mode
        self.bnest_padding_aware = bool(bnest_padding_aware)
        self.pad = self.kernel_size // 2
        self.norms = []
        self.prelu = None

    # ----------------------------------------------------------------- build
    def build(self, input_shape):
        in_channels = int(input_shape[-1])
        if in_channels % self.groups:
            raise ValueError(
                f"{self.name}: input channels {in_channels} not divisible by groups={self.groups}.")
        self.in_channels = in_channels
        self.build_branches(in_channels)
        for norm, channels in zip(self.norms, self.norm_channels()):
            if norm is not None:
                norm.build((None, None, None, channels))
        if self.activation == "prelu":
            self.prelu = keras.layers.PReLU(
                alpha_initializer=keras.initializers.Constant(0.25),
                shared_axes=[1, 2], name="prelu")
            self.prelu.build((None, None, None, self.filters))

    def norm_channels(self):
        """Channels of each branch norm (the identity branch of RepVGG has ``in``)."""
        return [self.filters] * len(self.norms)

    # ----------------------------------------------------- subclass contract
    def build_branches(self, in_channels):
        raise NotImplementedError

    def branch_kernels(self):
        raise NotImplementedError

    def branch_outputs(self, x):
        raise NotImplementedError

    # --------------------------------------------------------------- forward
    def call(self, inputs, training=False):
        if self.norm_mode == "bn":
            y = None
            for out, norm in zip(self.branch_outputs(inputs), self.norms):
                if norm is not None:
                    out = norm(out, training=training)
                y = out if y is None else y + out
        else:  # BN estimation never needs the branch feature maps: one conv.
            kernel, bias = self.merged_kernel_and_bias(inputs, training=training)
            y = self.convolve(inputs, kernel) + bias
        return self.activate(y)

    def convolve(self, inputs, kernel):
        """The merged convolution: symmetric pad k//2, then a valid conv."""
        return conv2d(symmetric_pad(inputs, self.pad), kernel, self.strides, self.groups)

    def activate(self, y):
        if self.activation == "relu":
            return ops.relu(y)
        if self.activation == "relu6":
            return ops.relu6(y)
        if self.activation == "prelu":
            return self.prelu(y)
        return y

    # ----------------------------------------------------------------- merge
    def merged_kernel_and_bias(self, inputs=None, training=False, variance_floor=False):
        """One conv kernel ``(k,k,in/g,out)`` and bias ``(out,)`` equal to the block.

        With ``training=False`` every norm is folded with its moving statistics,
        so ``conv(x, kernel) + bias`` equals the multi-branch block in inference.
        With ``training=True`` and ``inputs`` given, the norms are folded with
        this batch's statistics: measured on the branch outputs (``norm_mode
        "bn"``, RepQ-BN) or estimated from the input (``"bnest"``), and the
        moving statistics are updated. Differentiable w.r.t. every branch
        variable.

        ``variance_floor=True`` (training only) folds each branch with
        ``max(batch variance, moving variance)`` per channel and updates the
        moving variance with that value, so inference normalizes as training
        did; the moving variance then never decreases. A batch whose signal
        shrank (low-bit layers upstream) cannot scale a branch's folded kernel
        above its moving-statistics fold, the kernel the weight steps were
        calibrated on at the start of QAT (docs/training.md, "RepQ-BN below 4
        bits"). The default is RepQ-BN as specified: the batch variance.
        """
        kernels = self.branch_kernels()
        batch_moments = [None] * len(kernels)
        if training and any(n is not None for n in self.norms):
            if inputs is None:
                raise ValueError("merged_kernel_and_bias(training=True) needs the block inputs.")
            batch_moments = self.batch_moments(inputs, kernels)
        kernel_sum, bias_sum = 0.0, 0.0
        for (kernel, bias), norm, moments in zip(kernels, self.norms, batch_moments):
            if norm is not None:
                if moments is None:
                    mean, var = norm.moving_mean, norm.moving_variance
                else:
                    mean, var = moments
                    if variance_floor:
                        var = ops.maximum(var, ops.cast(norm.moving_variance, var.dtype))
                    update_moving_moments(norm, mean, var)
                kernel, bias = fold_norm(kernel, bias, norm, mean, var)
            kernel_sum = kernel_sum + kernel
            if bias is not None:
                bias_sum = bias_sum + bias
        return kernel_sum, bias_sum + ops.zeros((self.filters,), kernel_sum.dtype)

    def batch_moments(self, inputs, kernels):
        """Per-branch (mean, var) of this batch, ``None`` for branches without norm."""
        if self.norm_mode == "bnest":
            moments = input_moments(inputs)  # once per block: every branch reads the same input
            padding = (self.pad, self.strides) if self.bnest_padding_aware else None
            return [estimate_output_moments(inputs, k, b, self.groups, moments, padding) if n is not None else None
                    for (k, b), n in zip(kernels, self.norms)]
        outputs = self.branch_outputs(inputs)
        return [batch_moments(o) if n is not None else None for o, n in zip(outputs, self.norms)]

    # ---------------------------------------------------------------- deploy
    def deploy_layer(self):
        """A plain Keras layer computing this block in inference: one conv (+ act)."""
        kernel, bias = self.merged_kernel_and_bias()
        conv = PaddedConv2D(**self.deploy_conv_config())
        conv.build((None, None, None, self.in_channels))
        conv.set_weights([ops.convert_to_numpy(kernel), ops.convert_to_numpy(bias)])
        return self.with_activation(conv)

    def deploy_conv_config(self):
        """Constructor arguments of the single deploy conv (PReLU is applied after it)."""
        return dict(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                    pad=self.pad, groups=self.groups,
                    activation=None if self.activation == "prelu" else self.activation,
                    name=self.name if self.prelu is None else f"{self.name}_conv")

    def with_activation(self, conv):
        """``conv`` itself, or ``Sequential([conv, PReLU])`` carrying this block's slopes."""
        if self.prelu is None:
            return conv
        prelu = keras.layers.PReLU.from_config(self.prelu.get_config())
        prelu.build((None, None, None, self.filters))
        prelu.set_weights(self.prelu.get_weights())
        return keras.Sequential([conv, prelu], name=self.name)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape

        def out(size):
            if size is None:
                return None
            return (size + 2 * self.pad - self.kernel_size) // self.strides + 1
        return (n, out(h), out(w), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      groups=self.groups, activation=self.activation, norm_mode=self.norm_mode,
                      bnest_padding_aware=self.bnest_padding_aware)
        return config
