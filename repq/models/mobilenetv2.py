"""MobileNetV2 (Sandler et al. 2018) of ConvBN layers, with a width multiplier (PTQ path)."""

import keras

from repq.models.defaults import ModelDefaults
from repq.models.registry import stride_layout, register_model
from repq.layers import ConvBN

# (expansion t, output channels c, repeats n, first stride s), as in the paper.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value, divisor=8):
    """Round channels to a multiple of ``divisor``, never dropping below 90% (torchvision rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def _inverted_residual(x, out, stride, expansion, name, norm_mode):
    cin = x.shape[-1]
    hidden = int(round(cin * expansion))
    y = x
    if expansion != 1:
        y = ConvBN(hidden, 1, activation="relu6", norm_mode=norm_mode, name=f"{name}_expand")(y)
    y = ConvBN(hidden, 3, strides=stride, groups=hidden, activation="relu6", norm_mode=norm_mode,
               name=f"{name}_depthwise")(y)
    y = ConvBN(out, 1, norm_mode=norm_mode, name=f"{name}_project")(y)
    if stride == 1 and cin == out:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


# AdaRound λ 0.1 (SPEC Part C §3) and MRECG k = 7 (Ma et al.) for MobileNetV2.
@register_model(defaults=ModelDefaults(mrecg_topk=7, adaround_lambda=0.1))
def mobilenetv2(num_classes=1000, input_shape=(224, 224, 3), width_multiplier=1.0, stem="auto",
                norm_mode="bn", dropout=0.2):
    """MobileNetV2; small-image layout (< 64 px) keeps stride 1 in the stem and the
    first stride-2 stage, so 32x32 ends at 4x4; ``stem="half"`` keeps only the
    latter (``repq.models.registry.stride_layout``)."""
    layout = stride_layout(input_shape, stem)
    inputs = keras.Input(input_shape, name="image")
    x = ConvBN(make_divisible(32 * width_multiplier), 3, strides=1 if layout == "small" else 2, activation="relu6",
               norm_mode=norm_mode, name="stem")(inputs)
    for stage, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
        if layout != "imagenet" and stage == 1:
            s = 1
        for i in range(n):
            x = _inverted_residual(x, make_divisible(c * width_multiplier), s if i == 0 else 1, t,
                                   f"block{stage}_{i}", norm_mode)
    x = ConvBN(make_divisible(1280 * max(1.0, width_multiplier)), 1, activation="relu6",
               norm_mode=norm_mode, name="head_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"mobilenetv2_{width_multiplier:g}")
