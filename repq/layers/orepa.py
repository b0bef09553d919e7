"""OREPA (Hu et al., CVPR 2022): online re-parametrization in weight space.

Branches never run on feature maps: each call builds one k x k kernel from six
weight-space branches (each scaled per output channel by ``vector``) and runs a
single convolution followed by one BatchNorm. ``OREPALargeConv`` composes
several 3x3 OREPA kernels into a large (e.g. 7x7) stem kernel.
"""

import math

import keras
import numpy as np
from keras import ops

from repq.layers.base import RepConvBlock, batch_norm
from repq.layers.kernel_ops import embed_center
from repq.layers.padded_conv import symmetric_pad

# Initial per-branch scales: origin, avg, prior, 1x1-kxk, 1x1, depthwise-separable.
BRANCH_SCALE_INIT = (0.25, 0.25, 0.0, 0.5, 1.0, 0.5)
DW_EXPANSION = 8


def frequency_prior(out_channels, k):
    """Fixed DCT-like prior ``(k, k, out)``: row cosines for the first half of
    the channels, column cosines for the rest (OREPA ``fre_init``; the official
    code hard-codes k=3, this is its natural extension to any k)."""
    prior = np.zeros((k, k, out_channels), np.float32)
    half = out_channels / 2
    grid = np.arange(k) + 0.5
    for i in range(out_channels):
        if i < half:
            prior[:, :, i] = np.cos(math.pi * grid * (i + 1) / k)[:, None]
        else:
            prior[:, :, i] = np.cos(math.pi * grid * (i + 1 - half) / k)[None, :]
    return prior


def he_uniform(fan_in):
    """PyTorch ``kaiming_uniform_(a=0)`` with an explicit fan-in."""
    bound = math.sqrt(6.0 / fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


@keras.saving.register_keras_serializable(package="repq")
class OREPAKernel(keras.layers.Layer):
    """The weight generator of one OREPA conv: ``kernel() -> (k, k, in, out)``.

    Variables (HWIO-like layouts): ``origin (k,k,in,out)``, ``avg_conv (in,out)``,
    ``pfir_conv (in,out)`` with the frozen ``prior (k,k,out)``, ``idconv1 (T,in)``
    (zero init, added to the identity) and ``conv2 (k,k,T,out)``,
    ``conv_1x1 (in,out)``, ``dw (k,k,in*8)`` and ``pw (in*8,out)``, and the branch
    scales ``vector (6,out)``. Only ``groups=1`` is supported.
    """

    def __init__(self, filters, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)

    def build(self, input_shape):
        k, cin, cout = self.kernel_size, int(input_shape[-1]), self.filters
        self.in_channels = cin
        self.origin = self.add_weight(name="origin", shape=(k, k, cin, cout), initializer=he_uniform(k * k * cin))
        self.avg_conv = self.add_weight(name="avg_conv", shape=(cin, cout), initializer=he_uniform(cin))
        self.pfir_conv = self.add_weight(name="pfir_conv", shape=(cin, cout), initializer=he_uniform(cin))
        self.prior = self.add_weight(name="prior", shape=(k, k, cout), trainable=False,
                                     initializer=keras.initializers.Constant(frequency_prior(cout, k)))
        self.idconv1 = self.add_weight(name="idconv1", shape=(cin, cin), initializer="zeros")
        self.conv2 = self.add_weight(name="conv2", shape=(k, k, cin, cout), initializer=he_uniform(k * k * cin))
        self.conv_1x1 = self.add_weight(name="conv_1x1", shape=(cin, cout), initializer=he_uniform(cin))
        self.dw = self.add_weight(name="dw", shape=(k, k, cin * DW_EXPANSION), initializer=he_uniform(k * k))
        self.pw = self.add_weight(name="pw", shape=(cin * DW_EXPANSION, cout),
                                  initializer=he_uniform(cin * DW_EXPANSION))
        self.vector = self.add_weight(
            name="vector", shape=(6, cout),
            initializer=keras.initializers.Constant(np.repeat(np.array(BRANCH_SCALE_INIT, np.float32)[:, None], cout, 1)))

    def kernel(self):
        """The generated ``(k, k, in, out)`` kernel, differentiable in every variable."""
        k, cin, cout = self.kernel_size, self.in_channels, self.filters
        dtype = self.origin.dtype
        ones = ops.ones((k, k, 1, 1), dtype)
        identity = ops.eye(cin, dtype=dtype)
        branches = [
            self.origin,
            ones * (self.avg_conv / float(k * k))[None, None],
            self.pfir_conv[None, None] * self.prior[:, :, None, :],
            # (I + idconv1)^T @ conv2 per tap: a batched matmul straight into (k*k, in, out), no transposes
            # (at 1x1-2x2 feature maps this product, 2 k^2 in T out FLOPs, costs more than the conv itself)
            ops.reshape(ops.matmul(ops.transpose(self.idconv1 + identity),
                                   ops.reshape(self.conv2, (k * k, cin, cout))), (k, k, cin, cout)),
            embed_center(self.conv_1x1[None, None], k),
            ops.einsum("hwct,cto->hwco", ops.reshape(self.dw, (k, k, cin, DW_EXPANSION)),
                       ops.reshape(self.pw, (cin, DW_EXPANSION, cout))),
        ]
        return sum(w * self.vector[j] for j, w in enumerate(branches))

    def call(self, inputs):
        raise TypeError("OREPAKernel generates a kernel; call .kernel(), not the layer.")

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size)
        return config


@keras.saving.register_keras_serializable(package="repq")
class OREPABlock(RepConvBlock):
    """``act(BN(conv(x, W)))`` where ``W`` is generated by an :class:`OREPAKernel`."""

    def __init__(self, filters, kernel_size=3, strides=1, groups=1, activation=None, **kwargs):
        if groups != 1:
            raise ValueError("OREPABlock supports groups=1 only.")
        super().__init__(filters, kernel_size, strides=strides, groups=1, activation=activation, **kwargs)

    def build_branches(self, in_channels):
        self.generator = OREPAKernel(self.filters, self.kernel_size, name="generator")
        self.generator.build((None, None, None, in_channels))
        self.norms = [batch_norm("bn")]

    def branch_kernels(self):
        return [(self.generator.kernel(), None)]

    def branch_outputs(self, x):
        return [ops.conv(symmetric_pad(x, self.pad), self.generator.kernel(), strides=self.strides,
                         padding="valid")]


@keras.saving.register_keras_serializable(package="repq")
class OREPALargeConv(RepConvBlock):
    """Large-kernel OREPA stem: ``(k-1)/2`` stacked 3x3 OREPA generators, then BN.

    Generator 0 maps in->out, the others out->out. The kernel is composed by
    treating generator 0's kernel as ``in`` images of ``out`` channels and
    convolving it (zero padding 2) with each next 3x3 kernel: 3 -> 5 -> 7 ...
    """

    def __init__(self, filters, kernel_size=7, strides=1, groups=1, activation=None, **kwargs):
        if kernel_size < 5 or groups != 1:
            raise ValueError("OREPALargeConv needs an odd kernel_size >= 5 and groups=1.")
        super().__init__(filters, kernel_size, strides=strides, groups=1, activation=activation, **kwargs)

    def build_branches(self, in_channels):
        self.generators = []
        for j in range((self.kernel_size - 1) // 2):
            gen = OREPAKernel(self.filters, 3, name=f"generator_{j}")
            gen.build((None, None, None, in_channels if j == 0 else self.filters))
            self.generators.append(gen)
        self.norms = [batch_norm("bn")]

    def composed_kernel(self):
        """``(k, k, in, out)`` kernel equal to the composition of the generators."""
        images = ops.transpose(self.generators[0].kernel(), (2, 0, 1, 3))   # (in, 3, 3, out)
        for gen in self.generators[1:]:
            images = ops.conv(symmetric_pad(images, 2), gen.kernel(), padding="valid")
        return ops.transpose(images, (1, 2, 0, 3))

    def branch_kernels(self):
        return [(self.composed_kernel(), None)]

    def branch_outputs(self, x):
        return [ops.conv(symmetric_pad(x, self.pad), self.composed_kernel(), strides=self.strides,
                         padding="valid")]
