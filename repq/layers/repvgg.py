"""RepVGG block (Ding et al. 2021): 3x3+BN, 1x1+BN and identity-BN branches."""

import keras
from keras import ops

from repq.layers.base import RepConvBlock, batch_norm, torch_default_init
from repq.layers.kernel_ops import embed_center, identity_kernel
from repq.layers.padded_conv import conv2d, symmetric_pad


@keras.saving.register_keras_serializable(package="repq")
class RepVGGBlock(RepConvBlock):
    """``act(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x))``, merged into one 3x3 conv.

    The identity branch exists only when ``in == filters`` and ``strides == 1``
    (``use_identity=None``, the default) or when forced with ``use_identity``.
    ReLU is part of the block, as in the official implementation.
    """

    def __init__(self, filters, strides=1, groups=1, activation="relu", use_identity=None,
                 **kwargs):
        kwargs.pop("kernel_size", None)
        super().__init__(filters, 3, strides=strides, groups=groups, activation=activation,
                         **kwargs)
        self.use_identity = use_identity

    def build_branches(self, in_channels):
        per_group = in_channels // self.groups
        self.has_identity = (in_channels == self.filters and self.strides == 1
                             if self.use_identity is None else bool(self.use_identity))
        if self.has_identity and (in_channels != self.filters or self.strides != 1):
            raise ValueError(f"{self.name}: identity branch needs in == out and stride 1.")
        self.kernel_3x3 = self.add_weight(name="kernel_3x3", shape=(3, 3, per_group, self.filters),
                                          initializer=torch_default_init())
        self.kernel_1x1 = self.add_weight(name="kernel_1x1", shape=(1, 1, per_group, self.filters),
                                          initializer=torch_default_init())
        self.norms = [batch_norm("bn_3x3"), batch_norm("bn_1x1")]
        if self.has_identity:
            self.norms.append(batch_norm("bn_identity"))

    def branch_kernels(self):
        kernels = [(self.kernel_3x3, None), (embed_center(self.kernel_1x1, 3), None)]
        if self.has_identity:
            kernels.append((ops.convert_to_tensor(
                identity_kernel(self.filters, self.groups, 3), self.kernel_3x3.dtype), None))
        return kernels

    def branch_outputs(self, x):
        outputs = [
            conv2d(symmetric_pad(x, 1), self.kernel_3x3, self.strides, self.groups),
            conv2d(x, self.kernel_1x1, self.strides, self.groups),
        ]
        if self.has_identity:
            outputs.append(x)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.pop("kernel_size")
        config["use_identity"] = self.use_identity
        return config
