"""Edge-oriented Convolution Block (ECBSR, Zhang et al., ACM MM 2021).

Branches (all with bias, no BatchNorm): 3x3; 1x1 -> 3x3; 1x1 -> scaled Sobel-x,
Sobel-y and Laplacian depthwise filters; optional identity. Every two-step
branch pads its 1x1 output with a border equal to the 1x1 bias, so the branch
equals one 3x3 conv on the zero-padded input (exact fusion).
"""

import math

import keras
import numpy as np
from keras import ops

from repq.layers.base import RepConvBlock
from repq.layers.kernel_ops import identity_kernel
from repq.layers.padded_conv import symmetric_pad

EDGE_MASKS = {
    "sobelx": np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32),
    "sobely": np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float32),
    "laplacian": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32),
}


def torch_uniform(fan_in):
    """PyTorch's Conv2d default init (weights and bias): U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def pad_with_border(y, border):
    """Zero-pad ``y`` (N,H,W,C) by one pixel, with the border set to ``border`` (C,)."""
    return symmetric_pad(y - border, 1) + border


@keras.saving.register_keras_serializable(package="repq")
class ECBlock(RepConvBlock):
    """ECB merged into one 3x3 conv with bias.

    Args:
      depth_multiplier: width of the 1x1->3x3 branch, ``int(filters * m)``.
      activation: "prelu" (default, per channel init 0.25), "relu" or None.
      with_identity: add the input (only when in == filters).
    """

    def __init__(self, filters, depth_multiplier=2.0, activation="prelu", with_identity=False, **kwargs):
        kwargs.pop("kernel_size", None)
        kwargs.pop("strides", None)
        kwargs.pop("groups", None)
        super().__init__(filters, 3, strides=1, groups=1, activation=activation, **kwargs)
        self.depth_multiplier = float(depth_multiplier)
        self.with_identity = bool(with_identity)

    def build_branches(self, in_channels):
        out, mid = self.filters, int(self.filters * self.depth_multiplier)
        w = self.add_weight
        self.k3 = w(name="conv3x3_kernel", shape=(3, 3, in_channels, out), initializer=torch_uniform(9 * in_channels))
        self.b3 = w(name="conv3x3_bias", shape=(out,), initializer=torch_uniform(9 * in_channels))
        self.seq_k0 = w(name="seq_k0", shape=(in_channels, mid), initializer=torch_uniform(in_channels))
        self.seq_b0 = w(name="seq_b0", shape=(mid,), initializer=torch_uniform(in_channels))
        self.seq_k1 = w(name="seq_k1", shape=(3, 3, mid, out), initializer=torch_uniform(9 * mid))
        self.seq_b1 = w(name="seq_b1", shape=(out,), initializer=torch_uniform(9 * mid))
        self.edges = {}
        for kind in EDGE_MASKS:
            self.edges[kind] = (
                w(name=f"{kind}_k0", shape=(in_channels, out), initializer=torch_uniform(in_channels)),
                w(name=f"{kind}_b0", shape=(out,), initializer=torch_uniform(in_channels)),
                w(name=f"{kind}_scale", shape=(out,), initializer=keras.initializers.RandomNormal(0, 1e-3)),
                w(name=f"{kind}_bias", shape=(out,), initializer=keras.initializers.RandomNormal(0, 1e-3)),
            )
        self.has_identity = self.with_identity and in_channels == out
        self.norms = [None] * (5 + int(self.has_identity))

    def branch_kernels(self):
        kernels = [
            (self.k3, self.b3),
            (ops.einsum("hwmo,im->hwio", self.seq_k1, self.seq_k0),
             ops.einsum("hwmo,m->o", self.seq_k1, self.seq_b0) + self.seq_b1),
        ]
        for kind, (k0, b0, scale, bias) in self.edges.items():
            mask = ops.convert_to_tensor(EDGE_MASKS[kind][:, :, None, None], k0.dtype)  # (3,3,1,1)
            kernels.append((mask * k0[None, None] * scale,
                            b0 * scale * float(EDGE_MASKS[kind].sum()) + bias))
        if self.has_identity:
            kernels.append((ops.convert_to_tensor(identity_kernel(self.filters, 1, 3), self.k3.dtype), None))
        return kernels

    def branch_outputs(self, x):
        outputs = [ops.conv(symmetric_pad(x, 1), self.k3, padding="valid") + self.b3]
        y0 = ops.conv(x, self.seq_k0[None, None], padding="valid") + self.seq_b0
        outputs.append(ops.conv(pad_with_border(y0, self.seq_b0), self.seq_k1, padding="valid") + self.seq_b1)
        for kind, (k0, b0, scale, bias) in self.edges.items():
            y0 = ops.conv(x, k0[None, None], padding="valid") + b0
            depthwise = ops.convert_to_tensor(EDGE_MASKS[kind][:, :, None, None], k0.dtype) * scale[:, None]
            outputs.append(ops.depthwise_conv(pad_with_border(y0, b0), depthwise, padding="valid") + bias)
        if self.has_identity:
            outputs.append(x)
        return outputs

    def get_config(self):
        config = super().get_config()
        for key in ("kernel_size", "strides", "groups", "norm_mode", "bnest_padding_aware"):
            config.pop(key)
        config.update(depth_multiplier=self.depth_multiplier, with_identity=self.with_identity)
        return config
