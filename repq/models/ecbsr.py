"""ECBSR (Zhang et al., ACM MM 2021): ECB backbone + residual pixel shuffle, Y channel."""

import keras

from repq.models.defaults import ModelDefaults
from repq.models.registry import register_model
from repq.layers import ECBlock, PixelShuffleResidual


def ecbsr(module_nums=4, channel_nums=16, scale=2, input_shape=(None, None, 1), with_identity=False,
          activation="prelu", depth_multiplier=2.0, num_classes=None, name=None):
    """``depth_to_space(backbone(x) + x, scale)`` with backbone ECB(1->c), m x ECB(c->c), ECB(c->r^2).

    Inputs and outputs are Y-channel images in the 0-255 range (ECBSR convention).
    """
    if num_classes is not None:
        raise ValueError("ECBSR is a super-resolution model; it takes no num_classes.")
    if input_shape[-1] != 1:
        raise ValueError(f"ECBSR works on one (Y) channel; got input_shape {input_shape}.")
    inputs = keras.Input(input_shape, name="lr_image")
    x = ECBlock(channel_nums, depth_multiplier, activation, with_identity, name="ecb_head")(inputs)
    for i in range(module_nums):
        x = ECBlock(channel_nums, depth_multiplier, activation, with_identity, name=f"ecb_body{i}")(x)
    x = ECBlock(scale * scale, depth_multiplier, None, with_identity, name="ecb_tail")(x)
    outputs = PixelShuffleResidual(scale, name="upsample")(x, inputs)
    return keras.Model(inputs, outputs, name=name or f"ecbsr_m{module_nums}c{channel_nums}_x{scale}")


@register_model(defaults=ModelDefaults(sr_scale=2))
def ecbsr_m4c16(scale=2, input_shape=(None, None, 1), **kwargs):
    """ECBSR-M4C16 (4 body ECBs of 16 channels, PReLU), x2 by default."""
    return ecbsr(4, 16, scale, input_shape, **kwargs)


@register_model(defaults=ModelDefaults(sr_scale=2))
def ecbsr_m4c16_x2(input_shape=(None, None, 1), **kwargs):
    """ECBSR-M4C16 for x2 super-resolution."""
    return ecbsr(4, 16, 2, input_shape, **kwargs)


@register_model(defaults=ModelDefaults(sr_scale=4))
def ecbsr_m4c16_x4(input_shape=(None, None, 1), **kwargs):
    """ECBSR-M4C16 for x4 super-resolution."""
    return ecbsr(4, 16, 4, input_shape, **kwargs)
