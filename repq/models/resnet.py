"""ResNet-18 and its ACNet / OREPA variants (BasicBlock, stages [2, 2, 2, 2])."""

import keras

from repq.models.defaults import ModelDefaults
from repq.models.registry import stride_layout, register_model
from repq.layers import ACBlock, ConvBN, OREPABlock, OREPALargeConv
from repq.layers.padded_conv import symmetric_pad
from repq.qat.rules import PrecisionRule

# How each variant builds its 3x3 convs (the stem and 1x1 shortcuts are listed separately).
CONV3X3 = {"plain": ConvBN, "acnet": ACBlock, "orepa": OREPABlock}
# RepQ keeps true BatchNorm in the last two 3x3 convs under BNEst (small maps bias the estimate).
KEEP_BN = ("stage4_block1_conv1", "stage4_block1_conv2")


@keras.saving.register_keras_serializable(package="repq")
class PaddedMaxPool(keras.layers.MaxPooling2D):
    """3x3 stride-2 max pool with symmetric zero padding 1 (PyTorch ``padding=1``).

    Zero padding equals PyTorch's -inf padding here because the input follows a ReLU.
    """

    def __init__(self, **kwargs):
        kwargs.update(pool_size=3, strides=2, padding="valid")
        super().__init__(**kwargs)

    def call(self, inputs):
        return super().call(symmetric_pad(inputs, 1))

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return super().compute_output_shape((n, None if h is None else h + 2, None if w is None else w + 2, c))

    def get_config(self):
        config = super().get_config()
        for key in ("pool_size", "strides", "padding"):
            config.pop(key)
        return config


def _stem(variant, x, layout, norm_mode):
    if layout == "small":  # CIFAR-style: one 3x3 conv, stride 1, no max pool.
        return CONV3X3[variant](64, 3, activation="relu", norm_mode=norm_mode, name="stem")(x)
    if variant == "orepa":
        x = OREPALargeConv(64, 7, strides=2, activation="relu", norm_mode=norm_mode, name="stem")(x)
    else:  # ACNet keeps the 7x7 stem plain.
        x = ConvBN(64, 7, strides=2, activation="relu", norm_mode=norm_mode, name="stem")(x)
    return PaddedMaxPool(name="stem_pool")(x) if layout == "imagenet" else x  # "half": no max pool


def _basic_block(variant, x, filters, stride, name, mode):
    """``relu(conv2(conv1(x)) + shortcut(x))``; ``mode(layer_name)`` gives each layer's norm_mode."""
    conv = CONV3X3[variant]
    y = conv(filters, 3, strides=stride, activation="relu", norm_mode=mode(f"{name}_conv1"),
             name=f"{name}_conv1")(x)
    y = conv(filters, 3, norm_mode=mode(f"{name}_conv2"), name=f"{name}_conv2")(y)
    if stride != 1 or x.shape[-1] != filters:
        x = ConvBN(filters, 1, strides=stride, norm_mode=mode(f"{name}_shortcut"),
                   name=f"{name}_shortcut")(x)
    y = keras.layers.Add(name=f"{name}_add")([y, x])
    return keras.layers.ReLU(name=f"{name}_relu")(y)


def resnet18_variant(variant, num_classes=1000, input_shape=(224, 224, 3), stem="auto",
                     norm_mode="bn", bn_layers=None, name=None):
    """ResNet-18 whose 3x3 convs are ``variant`` blocks ("plain", "acnet", "orepa").

    Small-image layout (inputs < 64 px): 3x3 stride-1 stem and no max pool, so
    32x32 ends at 4x4; ``stem="half"``: the 7x7 stride-2 stem without max pool
    (``repq.models.registry.stride_layout``). ``bn_layers``: names of layers that keep true BatchNorm
    when ``norm_mode="bnest"`` (default: the last two 3x3 convs, as in RepQ).
    """
    layout = stride_layout(input_shape, stem)
    if bn_layers is None:
        bn_layers = KEEP_BN

    def mode(layer_name):
        return "bn" if layer_name in bn_layers else norm_mode

    inputs = keras.Input(input_shape, name="image")
    x = _stem(variant, inputs, layout, mode("stem"))
    for stage, (width, first_stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), start=1):
        for i in range(2):
            x = _basic_block(variant, x, width, first_stride if i == 0 else 1,
                             f"stage{stage}_block{i}", mode)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name or f"{variant}_resnet18")


@register_model(defaults=ModelDefaults(keep_bn=KEEP_BN, mrecg_topk=2))  # MRECG k = 2 (Ma et al.)
def resnet18(num_classes=1000, input_shape=(224, 224, 3), **kwargs):
    """Plain (torchvision-layout) ResNet-18 of ConvBN layers, for the PTQ path."""
    return resnet18_variant("plain", num_classes, input_shape, name="resnet18", **kwargs)


@register_model(defaults=ModelDefaults(  # first layer 8-bit (RepQ)
    precision_rule=PrecisionRule(first_input=True, first_weight=True, last_input=False, last_weight=False),
    keep_bn=KEEP_BN))
def ac_resnet18(num_classes=1000, input_shape=(224, 224, 3), **kwargs):
    """AC-ResNet-18: every 3x3 conv an ACB; plain 7x7 stem and 1x1 shortcuts."""
    return resnet18_variant("acnet", num_classes, input_shape, name="ac_resnet18", **kwargs)


@register_model(defaults=ModelDefaults(keep_bn=KEEP_BN))
def orepa_resnet18(num_classes=1000, input_shape=(224, 224, 3), **kwargs):
    """OREPA-ResNet-18: OREPA 3x3 convs, OREPA large-kernel 7x7 stem, plain 1x1 shortcuts."""
    return resnet18_variant("orepa", num_classes, input_shape, name="orepa_resnet18", **kwargs)
