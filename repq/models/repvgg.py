"""RepVGG-A0 / B0 (Ding et al., CVPR 2021) built from :class:`RepVGGBlock`."""

import keras

from repq.models.defaults import ModelDefaults
from repq.models.registry import register_model, stride_layout
from repq.layers import RepVGGBlock
from repq.qat.rules import PrecisionRule


def repvgg(num_blocks, width_multiplier, num_classes=1000, input_shape=(224, 224, 3),
           stem="auto", norm_mode="bn", name="repvgg"):
    """A RepVGG network.

    ImageNet layout: stage0 (one block, stride 2) and four stages whose first
    block has stride 2 (/32). Small-image layout (inputs < 64 px, e.g. 32x32):
    stage0 and stage1 keep stride 1, so 32x32 ends at 4x4. ``stem="half"``:
    stage0 stride 2, stage1 stride 1 (32x32 ends at 2x2); see ``stride_layout``.

    Args:
      num_blocks: blocks per stage 1..4.
      width_multiplier: (a, a, a, b) as in the paper.
      norm_mode: "bn" or "bnest" for every block.
    """
    layout = stride_layout(input_shape, stem)
    a, b = width_multiplier[0], width_multiplier[3]
    widths = [int(64 * a), int(128 * a), int(256 * a), int(512 * b)]
    inputs = keras.Input(input_shape, name="image")
    x = RepVGGBlock(min(64, int(64 * a)), strides=1 if layout == "small" else 2, norm_mode=norm_mode,
                    name="stage0")(inputs)
    for stage, (width, blocks) in enumerate(zip(widths, num_blocks), start=1):
        for i in range(blocks):
            stride = 2 if i == 0 and not (layout != "imagenet" and stage == 1) else 1
            x = RepVGGBlock(width, strides=stride, norm_mode=norm_mode,
                            name=f"stage{stage}_block{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


# RepQ: only the first layer's input stays 8-bit.
DEFAULTS = ModelDefaults(precision_rule=PrecisionRule(first_input=True, first_weight=False, last_input=False,
                                                      last_weight=False))


@register_model(defaults=DEFAULTS)
def repvgg_a0(num_classes=1000, input_shape=(224, 224, 3), **kwargs):
    """RepVGG-A0: blocks [2, 4, 14, 1], widths 48-48-96-192-1280 (8.31M deploy params)."""
    return repvgg([2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5], num_classes, input_shape,
                  name="repvgg_a0", **kwargs)


@register_model(defaults=DEFAULTS)
def repvgg_b0(num_classes=1000, input_shape=(224, 224, 3), **kwargs):
    """RepVGG-B0: blocks [4, 6, 16, 1], widths 64-64-128-256-1280 (14.34M deploy params)."""
    return repvgg([4, 6, 16, 1], [1, 1, 1, 2.5], num_classes, input_shape,
                  name="repvgg_b0", **kwargs)
