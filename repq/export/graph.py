"""The export graph: the deploy model with every layer in a form TFLite quantizes exactly.

``export_model(model)`` takes a QAT model (``repq.quantize_model``) or its deploy
form (``repq.reparametrize``) and returns a flat functional model whose convs
are ``QuantizedConv2D`` and whose dense layers are 1x1 convolutions
(``QuantizedDenseAsConv``): the converter quantizes a FULLY_CONNECTED kernel
per output channel only through a transpose it cannot handle, while a CONV_2D
kernel keeps the per-channel steps of the fake-quant op.
"""

import keras
import tensorflow as tf
from keras import ops

from repq.export.errors import ExportError
from repq.graph import all_layers
from repq.layers.base import RepConvBlock
from repq.layers.padded_conv import conv2d, pad_amounts, zero_pad
from repq.qat.deploy import QuantizedConv2D, QuantizedDense
from repq.qat.quant_layers import QuantWrapper
from repq.qat.range_placement import flat_steps
from repq.qat.range_quant import LearnedStepContainer, RangeFakeQuant
from repq.quantizers import export_fake_quant, integer_range
from repq.reparam import reparametrize

# Layers the export graph accepts besides the quantized convs/denses.
SUPPORTED = (keras.layers.InputLayer, keras.layers.Add, keras.layers.ReLU, keras.layers.PReLU,
             keras.layers.Activation, keras.layers.GlobalAveragePooling2D, keras.layers.MaxPooling2D,
             keras.layers.AveragePooling2D, keras.layers.Flatten, keras.layers.Reshape,
             keras.layers.Dropout, keras.layers.ZeroPadding2D, RangeFakeQuant,
             LearnedStepContainer)


def container_factor(layer):
    """``2^(8 - act_bits)``: how much finer than the learned step the conv's int8 input scale is."""
    return 1 if layer.act_bits is None else 2 ** (8 - layer.act_bits)


def fine_container(x, layer):
    """``x`` (already on the ``act_bits`` grid of step ``s``) through an 8-bit fake-quant of step
    ``s / 2^(8-act_bits)``: the identity on the values, but TFLite stores the conv input as
    ``q * 2^(8-act_bits)`` with scale ``s / 2^(8-act_bits)`` (an exact requantize).

    Why: TFLite rounds the bias to int32 in units of ``s_in * s_w`` and requantizes the
    accumulator with a fixed-point multiplier ``s_in * s_w / s_out`` whose (double) rounding
    is off by up to ``~s_in * s_w / s_out`` output steps; a sub-8-bit input step makes that ratio
    ``2^(8-bits)`` times larger than in an 8-bit model (about 2% of the outputs of each 4-bit conv
    then differ by one step from the QAT model). The finer container scale shrinks both errors
    by ``2^(8-act_bits)``.
    """
    factor = container_factor(layer)
    if factor == 1:
        return x
    qmin8, qmax8 = integer_range(8, layer.input_signed)
    step = layer.input_step / factor
    return tf.quantization.fake_quant_with_min_max_vars(x, qmin8 * step, qmax8 * step, num_bits=8)


class SharedInputMixin:
    """``shared_input``: the layer's input tensor is also read by quantized layers with other learned
    steps (a ResNet block output: the next conv1 and the projection shortcut).

    TFLite stores that tensor once and requantizes it for the other readers, but only
    when every reader clamps before its fake-quant; with 8-bit readers (no clamp of
    their own) the converter leaves the producing ADD in float. Such readers therefore
    clamp to their 8-bit container first: the identity on the values.
    """

    shared_input = False
    input_max = None  # the producer's ReLU6 bound, folded into this reader's clamp (fold_relu6)

    def separated_input(self, x):
        if not self.shared_input or self.act_bits != 8:
            return x
        qmin8, qmax8 = integer_range(8, self.input_signed)
        return ops.minimum(ops.maximum(x, qmin8 * self.input_step), qmax8 * self.input_step)


@keras.saving.register_keras_serializable(package="repq")
class ExportQuantizedConv2D(SharedInputMixin, QuantizedConv2D):
    """``QuantizedConv2D`` whose quantized, padded input is stored in a finer int8 container
    (``fine_container``; after the padding, which TFLite must keep in one scale)."""

    def quantize_input(self, x):
        if self.input_max is None:
            return super().quantize_input(x)
        qmin, qmax = integer_range(self.act_bits, self.input_signed)
        qmin8, qmax8 = integer_range(8, self.input_signed)
        x = ops.minimum(ops.maximum(x, qmin * self.input_step), ops.minimum(qmax * self.input_step, self.input_max))
        return tf.quantization.fake_quant_with_min_max_vars(x, qmin8 * self.input_step, qmax8 * self.input_step,
                                                            num_bits=8)

    def call(self, inputs):
        x = zero_pad(self.quantize_input(self.separated_input(inputs)), self.pad)
        if any(map(any, pad_amounts(self.pad))):  # without a PAD between them the converter folds the two fake-quants
            x = fine_container(x, self)  # and can lose the rounding to the learned step (ResNets)
        y = conv2d(x, self.quantized_kernel(), self.strides, self.groups)  # depthwise: DEPTHWISE_CONV_2D
        if self.use_bias:
            y = y + self.bias
        return self.activation(y)


@keras.saving.register_keras_serializable(package="repq")
class QuantizedDenseAsConv(SharedInputMixin, QuantizedDense):
    """``QuantizedDense`` on ``(B, in)`` computed as a 1x1 conv on ``(B, 1, 1, in)`` -> ``(B, units)``."""

    # No fine_container here: the converter folds two adjacent fake-quants (with or without a
    # RESHAPE between them) into the first one, so the input keeps the learned step as its scale.
    def call(self, inputs):
        x = ops.reshape(self.quantize_input(self.separated_input(inputs)), (-1, 1, 1, self.kernel.shape[0]))
        qmin, qmax = integer_range(self.weight_bits, True)
        kernel = export_fake_quant(ops.reshape(self.kernel, (1, 1, *self.kernel.shape)), self.weight_step,
                                   qmin, qmax, self.weight_bits, per_channel=True)
        y = ops.reshape(ops.conv(x, kernel), (-1, self.units))
        if self.use_bias:
            y = y + self.bias
        return self.activation(y)


def is_quantized(model):
    """Whether ``model`` carries learned quantization (QAT wrappers or quantized deploy layers)."""
    return any(isinstance(l, (QuantWrapper, QuantizedConv2D, QuantizedDense))
               for l in all_layers(model))


def _export_conv(layer):
    clone = ExportQuantizedConv2D.from_config(layer.get_config())
    clone.build((None, None, None, layer.kernel.shape[2] * layer.groups))
    clone.set_weights(layer.get_weights())
    return clone


def _dense_as_conv(layer):
    if len(layer.input.shape) != 2:
        raise ExportError(f"layer {layer.name!r}: a quantized Dense on a rank-{len(layer.input.shape)} "
                          "input cannot be exported; flatten or pool to (batch, features) first.")
    clone = QuantizedDenseAsConv.from_config(layer.get_config())
    clone.build(layer.input.shape)
    clone.set_weights(layer.get_weights())
    return clone


def graph_layers(model):
    """The layers of ``model``, nested models expanded (not the sublayers of a layer)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from graph_layers(layer)
        else:
            yield layer


def _check_supported(layer):
    if isinstance(layer, (QuantizedConv2D, QuantizedDense)):
        _check_groups(layer)
        return
    if type(layer).__name__ in ("PixelShuffleResidual", "PaddedMaxPool") or isinstance(layer, SUPPORTED):
        return
    raise ExportError(f"layer {layer.name!r} of type {type(layer).__name__} is not supported by the "
                      "integer export (supported: quantized conv/dense, Add, ReLU, PReLU, pooling, "
                      "Flatten/Reshape, PixelShuffleResidual).")


def _check_groups(layer):
    """Plain and depthwise convs (``groups`` = input channels, a whole number of output channels per input
    channel: TFLite's depth multiplier) are exported; TFLite has no int8 op for other groupings."""
    if not isinstance(layer, QuantizedConv2D) or layer.groups == 1:
        return
    in_channels = layer.kernel.shape[2] * layer.groups
    if layer.groups != in_channels or layer.filters % in_channels:
        raise ExportError(f"layer {layer.name!r}: grouped quantized convs (groups={layer.groups}, {in_channels} -> "
                          f"{layer.filters} channels) are not supported by the integer export; only plain convs and "
                          "depthwise convs (groups = input channels) are (TFLite has no int8 grouped conv).")


def export_model(model):
    """QAT or deploy model -> deploy model ready for conversion (dense layers as 1x1 convs).

    Raises:
      ExportError: no learned quantization, or a layer the integer export cannot express.
    """
    if not isinstance(model, keras.Model):
        raise ExportError(f"expected a keras.Model, got {type(model).__name__}.")
    if not is_quantized(model):
        raise ExportError(f"model {model.name!r} has no quantizers: run train.py or repq.qat.quantize_model "
                          "first (or export it as float with float_model=True).")
    deploy = reparametrize(model) if any(isinstance(l, (QuantWrapper, RepConvBlock))
                                         for l in graph_layers(model)) else model
    for layer in graph_layers(deploy):
        _check_supported(layer)
    exported = keras.models.clone_model(
        deploy, recursive=True,
        clone_function=lambda l: (_dense_as_conv(l) if type(l) is QuantizedDense
                                  else _export_conv(l) if type(l) is QuantizedConv2D else l))
    _unify_near_equal_steps(exported)
    _mark_shared_inputs(exported)
    fold_relu6(exported)
    return exported


def fold_relu6(model):
    """Move each quantized conv's ReLU6 into the clamps of the quantized convs that read its output.

    ``clamp(relu6(y), 0, q s) = clamp(relu(y), 0, min(q s, 6))`` for an unsigned reader, so the values
    are unchanged; likewise before an 8-bit range that ends at or below 6. Why: the converter fuses a ReLU followed by the reader's clamp into an int8 conv
    and a MINIMUM, but leaves the conv in float when a ReLU6 (or a clip at 6) sits before the clamp.
    A ReLU6 whose output has another kind of reader is left as it is.
    """
    readers, producers = {}, {}
    for layer, _, in_keys, out_keys in flat_steps(model, {}, []):
        for key in in_keys:
            readers.setdefault(key, []).append(layer)
        if isinstance(layer, ExportQuantizedConv2D) and layer.activation is keras.activations.relu6:
            producers[out_keys[0]] = layer
    for key, conv in producers.items():
        folded = readers.get(key, [])
        if folded and all(_clamps_at_6(r) for r in folded):
            conv.activation = keras.activations.relu
            for reader in folded:
                if isinstance(reader, ExportQuantizedConv2D):
                    reader.input_max = 6.0


def _clamps_at_6(reader):
    """Whether ``reader`` can take over a ReLU6 of its input: an unsigned quantized conv (its clamp gets the
    bound), or a non-negative 8-bit range whose top code (after the converter's nudging) 6.0 reaches."""
    if isinstance(reader, ExportQuantizedConv2D):
        return reader.act_bits is not None and not reader.input_signed
    if isinstance(reader, RangeFakeQuant):
        from repq.export.integer_emulation import fake_quant_params

        scale, zero_point = fake_quant_params(float(reader.lo.numpy()), float(reader.hi.numpy()))
        # every value >= 6 lands on the top code either way (margin: a quarter step, not just a tie)
        return float(reader.lo.numpy()) >= 0.0 and (127 - zero_point - 0.25) * scale <= 6.0
    return False


# Readers of one tensor whose learned input steps differ by at most this (relative) read it with one step.
SAME_STEP_RTOL = 1e-5


def _input_readers(model):
    """``{tensor key: [quantized layers reading it]}`` over the flattened graph of ``model``."""
    readers = {}
    for layer, _, in_keys, _ in flat_steps(model, {}, []):
        if isinstance(layer, SharedInputMixin) and layer.act_bits is not None:
            for k in in_keys:
                readers.setdefault(k, []).append(layer)
    return readers


def _unify_near_equal_steps(model):
    """Give readers of one tensor with the same act_bits and signedness, whose learned input steps differ
    by at most SAME_STEP_RTOL, the step of the first of them exactly.

    Why: the converter cannot place such a pair. Steps one float32 ulp apart can give the two readers'
    fake-quants the same float32 range (3 bits: ``7 * 1.5214132 == 7 * 1.5214133``), which the converter
    merges into one, while conv1's padded container (``fine_container``) derives from its own step: with a
    ResNet block output read by conv1 and the projection shortcut, conversion fails with "'tfl.pad' op
    quantization parameters violate the same scale constraint" (a trained W3A3 AC-ResNet-18). Equal
    steps, or steps 1e-6 apart and more, convert. The change scales the reader's grid by at most
    SAME_STEP_RTOL: a value rounds to another level only where it lies that close to a rounding boundary
    (rare), and the fidelity report measures the result.
    """
    for layers in _input_readers(model).values():
        groups = {}
        for layer in layers:
            groups.setdefault((layer.act_bits, layer.input_signed), []).append(layer)
        for first, *others in groups.values():
            base = float(first.input_step.numpy())
            for layer in others:
                step = float(layer.input_step.numpy())
                if step != base and abs(step - base) <= SAME_STEP_RTOL * abs(base):
                    layer.input_step.assign(first.input_step)


def _mark_shared_inputs(model):
    """Set ``shared_input`` on quantized layers whose input tensor other quantized layers read
    with a different learned step (see :class:`SharedInputMixin`)."""
    for layers in _input_readers(model).values():
        if len({float(l.input_step.numpy()) for l in layers}) > 1:
            for layer in layers:
                layer.shared_input = True
