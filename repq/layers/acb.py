"""Asymmetric Convolution Block (ACNet, Ding et al. 2019): kxk, 1xk and kx1 branches."""

import keras
from keras import ops

from repq.layers.base import RepConvBlock, batch_norm, torch_default_init
from repq.layers.kernel_ops import embed_center
from repq.layers.padded_conv import symmetric_pad


@keras.saving.register_keras_serializable(package="repq")
class ACBlock(RepConvBlock):
    """``BN(conv_kxk(x)) + BN(conv_kx1(x)) + BN(conv_1xk(x))``, merged into one kxk conv.

    The kx1 ("ver") kernel lands on the centre column and the 1xk ("hor") kernel
    on the centre row of the square kernel; their inputs are padded only along
    the kernel's long axis so the windows stay aligned for any stride.
    No activation by default (ACNet applies ReLU outside the block).

    Args:
      gamma_init: optional initial value of all three BN gammas (ACNet uses 1
        on ImageNet and 1/3 on CIFAR).
    """

    def __init__(self, filters, kernel_size=3, strides=1, groups=1, activation=None,
                 gamma_init=None, **kwargs):
        super().__init__(filters, kernel_size, strides=strides, groups=groups,
                         activation=activation, **kwargs)
        self.gamma_init = gamma_init

    def build_branches(self, in_channels):
        k, per_group = self.kernel_size, in_channels // self.groups
        init = torch_default_init()
        self.kernel_square = self.add_weight(name="kernel_square", shape=(k, k, per_group, self.filters),
                                             initializer=init)
        self.kernel_ver = self.add_weight(name="kernel_ver", shape=(k, 1, per_group, self.filters),
                                          initializer=init)
        self.kernel_hor = self.add_weight(name="kernel_hor", shape=(1, k, per_group, self.filters),
                                          initializer=init)
        self.norms = [batch_norm("bn_square"), batch_norm("bn_ver"), batch_norm("bn_hor")]
        if self.gamma_init is not None:
            for norm in self.norms:
                norm.gamma_initializer = keras.initializers.Constant(self.gamma_init)

    def branch_kernels(self):
        k = self.kernel_size
        return [(self.kernel_square, None), (embed_center(self.kernel_ver, k), None),
                (embed_center(self.kernel_hor, k), None)]

    def branch_outputs(self, x):
        p, s = self.pad, self.strides
        ver_in = ops.pad(x, [[0, 0], [p, p], [0, 0], [0, 0]])
        hor_in = ops.pad(x, [[0, 0], [0, 0], [p, p], [0, 0]])
        return [ops.conv(symmetric_pad(x, p), self.kernel_square, strides=s, padding="valid"),
                ops.conv(ver_in, self.kernel_ver, strides=s, padding="valid"),
                ops.conv(hor_in, self.kernel_hor, strides=s, padding="valid")]

    def get_config(self):
        config = super().get_config()
        config["gamma_init"] = self.gamma_init
        return config
