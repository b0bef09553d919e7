"""Plain conv + BatchNorm (stems, shortcuts, plain ResNet/MobileNetV2 layers).

It is a one-branch rep block, so folding, QAT and deployment treat it exactly
like the multi-branch blocks.
"""

import keras

from repq.layers.base import RepConvBlock, batch_norm
from repq.layers.padded_conv import conv2d, symmetric_pad


@keras.saving.register_keras_serializable(package="repq")
class ConvBN(RepConvBlock):
    """``act(BN(conv(x)))`` with symmetric padding k//2; ``groups=in`` is depthwise."""

    def __init__(self, filters, kernel_size=3, strides=1, groups=1, activation=None,
                 kernel_initializer="he_normal", **kwargs):
        super().__init__(filters, kernel_size, strides=strides, groups=groups,
                         activation=activation, **kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build_branches(self, in_channels):
        k = self.kernel_size
        self.kernel = self.add_weight(name="kernel", shape=(k, k, in_channels // self.groups, self.filters),
                                      initializer=self.kernel_initializer)
        self.norms = [batch_norm("bn")]

    def branch_kernels(self):
        return [(self.kernel, None)]

    def branch_outputs(self, x):
        return [conv2d(symmetric_pad(x, self.pad), self.kernel, self.strides, self.groups)]

    def get_config(self):
        config = super().get_config()
        config["kernel_initializer"] = keras.initializers.serialize(self.kernel_initializer)
        return config
