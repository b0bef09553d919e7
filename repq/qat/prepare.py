"""Ordinary Keras models in the form ``quantize_model`` quantizes (e.g. ``keras.applications``).

Four exact rewrites of the float model, each a new model (the input is left as it is):

- ``DepthwiseConv2D`` -> a grouped :class:`~repq.layers.PaddedConv2D` (``groups`` = input
  channels, kernel ``(kh, kw, C, m)`` -> ``(kh, kw, 1, C*m)``, output channel ``c*m + q`` as
  Keras orders it), which the conv wrappers quantize and the export writes as an int8
  ``DEPTHWISE_CONV_2D``;
- a ``ZeroPadding2D`` whose only reader is a conv becomes that conv's explicit ``pad`` (the conv
  quantizes its input before padding, so the int8 conv pads with the zero point as TFLite does);
- a ``BatchNormalization`` that is the only reader of a conv or dense without activation is folded
  into it with its moving statistics (``W * gamma/std``, ``beta + (b - mean) * gamma/std``), as
  TFLite's converter folds it for inference. QAT then trains the folded layer (frozen BN);
- a ``ReLU`` (``max_value`` None or 6) or ``Activation("relu" | "relu6")`` that is the only reader
  of such a layer becomes its activation, so the int8 conv carries it as TFLite fuses it.

A BatchNormalization anywhere else (after an ``Add``, or read by several layers) stays, and
``quantize_model`` names it in its warning about float layers.
"""

import keras
import numpy as np

from repq.graph import copy_layer, fuse_pairs, rebuild
from repq.layers.padded_conv import PaddedConv2D, pad_amounts, same_padding
from repq.qat.config import copy_annotation

FOLDS_INTO = (keras.layers.Conv2D, keras.layers.Dense)


def prepare_keras_model(model):
    """``model`` with depthwise convs made grouped convs, BNs folded and ReLUs fused (see the module
    docstring); ``model`` itself when there is nothing to rewrite."""
    if any(isinstance(l, keras.layers.DepthwiseConv2D) for l in model.layers):
        model = rebuild(model, _depthwise_as_grouped)
    model = fuse_pairs(model, _padded_conv)
    model = fuse_pairs(model, _folded_norm)
    return fuse_pairs(model, _fused_relu)


def _depthwise_as_grouped(layer, args, kwargs):
    if not isinstance(layer, keras.layers.DepthwiseConv2D):
        return copy_layer(layer)(*args, **kwargs)
    return grouped_conv(layer, args[0].shape)(*args, **kwargs)


def grouped_conv(layer, input_shape):
    """A built ``DepthwiseConv2D`` as the equal :class:`PaddedConv2D` with ``groups`` = input channels."""
    if tuple(layer.dilation_rate) != (1, 1) or layer.data_format != "channels_last":
        raise ValueError(f"{layer.name}: DepthwiseConv2D with dilation_rate {layer.dilation_rate} or "
                         f"data_format {layer.data_format!r} cannot be quantized; use dilation_rate=1 and "
                         "channels_last.")
    kh, kw, channels, multiplier = layer.kernel.shape
    conv = PaddedConv2D(channels * multiplier, (kh, kw), pad=_explicit_padding(layer, input_shape),
                        strides=layer.strides, groups=channels, use_bias=layer.use_bias,
                        activation=layer.activation, name=layer.name)
    conv.build(input_shape)
    weights = [np.reshape(layer.kernel.numpy(), (kh, kw, 1, channels * multiplier))]
    conv.set_weights(weights + ([layer.bias.numpy()] if layer.use_bias else []))
    return conv


def _explicit_padding(layer, input_shape):
    """The padding ``layer`` applies (``'valid'`` or TF's ``'same'``) as ``((top, bottom), (left, right))``."""
    if layer.padding == "valid":
        return 0
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    height, width = input_shape[1:3]
    if (sh, sw) == (1, 1) and kh % 2 and kw % 2:
        return ((kh // 2,) * 2, (kw // 2,) * 2)
    if height is None or width is None:
        raise ValueError(f"{layer.name}: 'same' padding with stride {layer.strides} pads by an amount that depends "
                         "on the input size, and this model's input size is not fixed; build the model with a "
                         "fixed input shape (keras.Input((H, W, C))) to quantize it.")
    return (same_padding(height, kh, sh), same_padding(width, kw, sw))


def _padded_conv(padding, conv):
    """``conv`` (a 'valid' Conv2D) with the ``padding`` (a ZeroPadding2D) before it as its own ``pad``, or None."""
    if not (isinstance(padding, keras.layers.ZeroPadding2D) and isinstance(conv, keras.layers.Conv2D)
            and conv.padding == "valid" and padding.data_format == "channels_last"):
        return None
    (top, bottom), (left, right) = padding.padding
    (ctop, cbottom), (cleft, cright) = pad_amounts(getattr(conv, "pad", 0))
    config = {k: v for k, v in conv.get_config().items() if k != "padding"}
    pad = ((top + ctop, bottom + cbottom), (left + cleft, right + cright))
    return _replacement(conv, PaddedConv2D, dict(config, pad=pad), padding.input.shape, conv.get_weights())


def _linear(layer):
    return layer.activation in (None, keras.activations.linear)


def _folded_norm(producer, norm):
    """``producer`` (a conv or dense without activation) with ``norm`` folded in, or None."""
    if not (isinstance(norm, keras.layers.BatchNormalization) and isinstance(producer, FOLDS_INTO)
            and _linear(producer) and norm.axis in (-1, len(norm.input.shape) - 1)):
        return None
    std = np.sqrt(norm.moving_variance.numpy().astype(np.float64) + norm.epsilon)
    scale = (norm.gamma.numpy() if norm.scale else 1.0) / std
    shift = norm.beta.numpy() if norm.center else 0.0
    bias = producer.bias.numpy() if producer.use_bias else 0.0
    weights = [(producer.kernel.numpy() * scale).astype(np.float32),
               (shift + (bias - norm.moving_mean.numpy()) * scale).astype(np.float32)]
    return _replacement(producer, type(producer), dict(producer.get_config(), use_bias=True), producer.input.shape,
                        weights)


def _relu_name(layer):
    """"relu" / "relu6" when ``layer`` is a plain ReLU or ReLU6 layer, else None."""
    if isinstance(layer, keras.layers.ReLU):
        if layer.negative_slope or layer.threshold:
            return None
        return {None: "relu", 6.0: "relu6"}.get(None if layer.max_value is None else float(layer.max_value))
    if isinstance(layer, keras.layers.Activation):
        name = keras.activations.serialize(layer.activation)
        name = name if isinstance(name, str) else name.get("config", name.get("class_name"))
        return name if name in ("relu", "relu6") else None
    return None


def _fused_relu(producer, relu):
    """``producer`` (a conv or dense without activation) with ``relu`` as its activation, or None."""
    activation = _relu_name(relu)
    if activation is None or not isinstance(producer, FOLDS_INTO) or not _linear(producer):
        return None
    return _replacement(producer, type(producer), dict(producer.get_config(), activation=activation),
                        producer.input.shape, producer.get_weights())


def _replacement(original, cls, config, input_shape, weights):
    """``cls(**config)`` built for ``input_shape`` with ``weights``, carrying ``original``'s quantize annotation."""
    layer = cls.from_config(config)
    layer.build(input_shape)
    layer.set_weights(weights)
    copy_annotation(original, layer)
    return layer
