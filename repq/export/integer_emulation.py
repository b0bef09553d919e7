"""Integer-exact inference of the export graph, as LiteRT's default CPU runtime (XNNPACK) computes it.

The QAT model (float simulation) and the integer TFLite model differ only in
*how* they round: Keras rounds float32 results of float convs and sums, the
runtime rounds integer accumulators with its own requantization arithmetic.
Rarely (a value within float error of a .5 tie, or an exact tie in a residual
sum) the two round to neighbouring integers, and in a deep 4-bit network one
such flip can move a logit by several output steps.

:func:`run` evaluates the export graph (``repq.export.graph.export_model`` with
its range fake-quants, i.e. the Keras model that is converted) in integers,
from the Keras layers' own learned steps, ranges, kernels and biases - never
from the .tflite file - with the runtime's rounding rules:

- every fake-quant ``(lo, hi)`` is an int8 tensor with the converter's nudged scale
  ``(hi - lo) / 255`` and zero point ``round(-lo / scale) - 128`` (:func:`fake_quant_params`);
- CONV_2D: ``int32 acc = sum (q_in - z_in) * q_w + q_b``, then
  ``rint(float32(acc) * float32(s_in * s_w / s_out)) + z_out`` (fp32 requantization);
- ADD: 20-bit fixed-point multipliers of ``s_a / s_out`` and ``s_b / s_out``,
  rounding bias ``2^(shift-1)``, arithmetic right shift (XNNPACK's qs8 add);
- MEAN: ``rint(float32(sum q) * m + b)`` in float32, ``m = s_in / (s_out * n)``,
  ``b = z_out - (n * z_in) * m``: the zero points sit inside the rounding, so a tie rounds to the
  even *output* integer (``rint(sum (q - z_in) * m) + z_out`` rounds some ties the other way);
- QUANTIZE (int8 -> int8 between scales): 8-bit fixed-point multiplier
  ``rint(256 * s_in / s_out)``, arithmetic right shift by 8 with rounding bias;
- PRELU (TFLite's builtin kernel; XNNPACK does not take it): int8 slope, gemmlowp
  fixed-point multipliers (:func:`multiply_by_quantized_multiplier`);
- PAD, RESHAPE, MAXIMUM/MINIMUM clamps, MAX_POOL, DEPTH_TO_SPACE and a fused ReLU are exact;
- a tensor read by quantizers of different scales (a ResNet block output read by the next
  conv1 and the projection shortcut, each with its learned step) is stored in the scale of
  the one that comes last in the graph; the others requantize it (QUANTIZE).

Each rule was established against the runtime op by op and the whole emulation
is checked against LiteRT in ``tests/test_integer_emulation.py``. Values carry
int64 arrays (exact), convolutions run in float64 (exact for |acc| < 2^53).
"""

import dataclasses
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from repq.export.errors import ExportError
from repq.export.graph import ExportQuantizedConv2D, QuantizedDenseAsConv, container_factor
from repq.layers.padded_conv import pad_amounts
from repq.qat.range_placement import flat_steps
from repq.qat.range_quant import LearnedStepContainer, RangeFakeQuant, container_range
from repq.quantizers import integer_range

FLOAT32_EXACT_INTEGERS = 2 ** 24  # every integer of smaller magnitude is exactly a float32
INT8_MIN, INT8_MAX = -128, 127
CONV_LAYERS = (ExportQuantizedConv2D, QuantizedDenseAsConv)
ADD_MULTIPLIER_BITS = 20


@dataclasses.dataclass
class Quantized:
    """An int8 tensor: real value ``(q - zero_point) * scale``; ``q`` int64 in [-128, 127]."""
    q: np.ndarray
    scale: np.float32
    zero_point: int

    def dequantize(self):
        """Float values as the TFLite harness reads the int8 output (float32 arithmetic)."""
        return (self.q.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)


@dataclasses.dataclass
class Pending:
    """An op result the runtime requantizes straight into the int8 tensor that stores it.

    ``requantize(scale, zero_point) -> int64 q`` (unclamped) is the op's rounding rule;
    ``relu`` a fused ReLU; ``post`` value-moving ops (pad, pool, reshape) that
    commute with the rounding and are applied to the stored integers.
    """
    requantize: Callable
    relu: bool = False
    post: tuple = ()


def fake_quant_params(lo, hi):
    """``(scale, zero_point)`` the TFLite converter gives an 8-bit fake-quant on ``[lo, hi]`` (int8).

    As the converter's nudging computes it: in float64 from the float32 range,
    ``scale = (hi - lo) / 255``, the zero point from whichever end has the smaller
    arithmetic error, rounded half away from zero. (TF's own fake-quant kernel
    nudges in float32, which can round a tie such as 82.5 the other way.)
    """
    lo, hi = float(np.float32(lo)), float(np.float32(hi))
    scale = (hi - lo) / 255.0
    from_min, from_max = 0.0 - lo / scale, 255.0 - hi / scale  # on the uint8 grid, then shifted
    error_min, error_max = abs(lo / scale), 255.0 + abs(hi / scale)
    zero_point = from_min if error_min < error_max else from_max
    zero_point = int(np.clip(np.floor(zero_point + 0.5), 0, 255))
    return np.float32(scale), zero_point - 128


def requantize_int8(x, scale, zero_point):
    """int8 ``x`` into another scale: XNNPACK's QUANTIZE (8-bit fixed-point multiplier)."""
    if x.scale == scale and x.zero_point == zero_point:
        return x.q
    multiplier = int(np.rint(np.float32(256.0) * np.float32(x.scale / np.float32(scale))))
    bias = (zero_point << 8) - multiplier * x.zero_point + 0x80
    return (bias + x.q * multiplier) >> 8


def quantize_float(x, scale, zero_point):
    """A float model input as int8 integers before clamping: ``floor(x / s + 0.5) + z`` in float64
    (the fidelity harness feeds the TFLite model these; float32 ``x / s`` rounds some values within
    float error of a .5 tie to the other integer)."""
    return np.floor(np.asarray(x, np.float64) / np.float64(scale) + 0.5).astype(np.int64) + zero_point


def store(value, scale, zero_point, lo=INT8_MIN, hi=INT8_MAX):
    """``value`` (float input, :class:`Quantized` or :class:`Pending`) stored as int8 at
    ``(scale, zero_point)``, clamped to the integers ``[lo, hi]``."""
    scale = np.float32(scale)
    if isinstance(value, Pending):
        q = value.requantize(scale, zero_point)
        if value.relu:
            lo = max(lo, zero_point)
    elif isinstance(value, Quantized):
        q = requantize_int8(value, scale, zero_point)
    else:
        q = quantize_float(value, scale, zero_point)
    stored = Quantized(np.clip(q, max(lo, INT8_MIN), min(hi, INT8_MAX)), scale, zero_point)
    if isinstance(value, Pending):
        for op in value.post:
            stored = op(stored)
    return stored


def conv_dtype(zero_point, kernel_int):
    """The float type in which the conv of an int8 tensor (``zero_point``) with ``kernel_int`` is exact.

    ``|acc| <= max|q - z| * max_o sum|w_o|`` bounds every partial sum (``q`` in [-128, 127]).
    Below 2^24 every product and partial sum is an integer that float32 holds exactly (and
    float32 convs are much faster than float64 on CPU), else float64 (exact below 2^53: always,
    for int8 operands). Either way the result is the exact integer accumulator.
    """
    bound = max(INT8_MAX - zero_point, zero_point - INT8_MIN) * float(np.abs(kernel_int).sum(axis=(0, 1, 2)).max())
    return tf.float32 if bound < FLOAT32_EXACT_INTEGERS else tf.float64


def _conv_acc(x, kernel_int, strides, depthwise=False):
    """``sum (q - z) * w`` as int64 (N, H', W', out); ``x`` :class:`Quantized` (already padded); a
    ``depthwise`` HWIO kernel ``(kh, kw, 1, C*m)`` convolves each input channel with its own m filters."""
    dtype = conv_dtype(x.zero_point, kernel_int)
    q = tf.constant(x.q - x.zero_point, dtype)
    if depthwise:
        kh, kw, _, out = kernel_int.shape
        channels = x.q.shape[-1]  # output c*m + q reads input channel c (depth multiplier m)
        kernel = tf.constant(kernel_int.reshape(kh, kw, channels, out // channels), dtype)
        acc = tf.nn.depthwise_conv2d(q, kernel, (1, strides[0], strides[1], 1), "VALID")
        return acc.numpy().astype(np.int64)
    acc = tf.nn.conv2d(q, tf.constant(kernel_int, dtype), strides, "VALID")
    return acc.numpy().astype(np.int64)  # exact integers (conv_dtype)


def _pad(x, pad):
    """Zero-pad (in real values: with the zero point) by ``pad``: an int or ((top, bottom), (left, right))."""
    (top, bottom), (left, right) = pad_amounts(pad)
    if top == bottom == left == right == 0:
        return x
    q = np.pad(x.q, [(0, 0), (top, bottom), (left, right), (0, 0)], constant_values=x.zero_point)
    return Quantized(q, x.scale, x.zero_point)


def _storage_params(layer):
    """``(scale, zero_point)`` of the int8 tensor ``layer`` reads its input into, or None (not a quantizer)."""
    if isinstance(layer, CONV_LAYERS) and layer.act_bits is not None:
        step = np.float32(layer.input_step.numpy())
        qmin8, qmax8 = integer_range(8, layer.input_signed)
        return fake_quant_params(qmin8 * step, qmax8 * step)
    if isinstance(layer, RangeFakeQuant):
        return fake_quant_params(float(layer.lo.numpy()), float(layer.hi.numpy()))
    if isinstance(layer, LearnedStepContainer):
        lo, hi = container_range(layer.leader_layer())
        return fake_quant_params(float(lo), float(hi))
    return None


def _fine_params(layer):
    """``(scale, zero_point)`` of ``repq.export.graph.fine_container``, or None when the conv has none."""
    factor = container_factor(layer)
    if not (isinstance(layer, ExportQuantizedConv2D) and any(map(any, pad_amounts(layer.pad))) and factor > 1):
        return None
    fine_step = np.float32(np.float32(layer.input_step.numpy()) / np.float32(factor))
    qmin8, qmax8 = integer_range(8, layer.input_signed)
    return fake_quant_params(qmin8 * fine_step, qmax8 * fine_step)


@dataclasses.dataclass
class ConvConstants:
    """A quantized conv's integer form: HWIO ``kernel`` integers, int32 ``bias`` in units of
    ``acc_scale`` (``s_in * s_w`` per output channel, float32), ``strides``, a fused ``relu`` and
    whether it is ``depthwise`` (kernel ``(kh, kw, 1, C*m)``, m filters per input channel)."""
    kernel: np.ndarray
    bias: np.ndarray
    acc_scale: np.ndarray
    strides: int
    relu: bool
    depthwise: bool = False

    @classmethod
    def of(cls, layer):
        if layer.act_bits is None:
            raise ExportError(f"layer {layer.name!r} has a float input; integer emulation needs act_bits.")
        activation = keras.activations.serialize(layer.activation)
        activation = activation if isinstance(activation, str) else activation.get("config", {}).get("name", "")
        if activation not in ("linear", "relu"):
            raise ExportError(f"layer {layer.name!r}: activation {activation!r} cannot be emulated in integers.")
        dense = isinstance(layer, QuantizedDenseAsConv)
        kernel = layer.kernel.numpy()[None, None] if dense else layer.kernel.numpy()
        w_step = layer.weight_step.numpy().astype(np.float32)
        qmin_w, qmax_w = integer_range(layer.weight_bits, True)
        in_scale = (_fine_params(layer) or _storage_params(layer))[0]
        acc_scale = (in_scale * w_step).astype(np.float32)
        bias = (np.rint(layer.bias.numpy().astype(np.float64) / acc_scale.astype(np.float64)).astype(np.int64)
                if layer.use_bias else np.zeros(acc_scale.shape, np.int64))
        return cls(np.clip(np.floor(kernel.astype(np.float64) / w_step + 0.5), qmin_w, qmax_w), bias,
                   acc_scale, 1 if dense else layer.strides, activation == "relu",
                   depthwise=not dense and layer.groups > 1)


def _input_of(layer, value):
    """The conv's quantized input: learned step (8-bit container, ``act_bits`` clamp), padded,
    then in the finer container of ``repq.export.graph.fine_container`` when it has one."""
    scale, zp = _storage_params(layer)
    qmin, qmax = integer_range(layer.act_bits, layer.input_signed)
    hi = qmax + zp
    if getattr(layer, "input_max", None) is not None:  # a folded ReLU6 (repq.export.graph.fold_relu6)
        hi = min(hi, zp + int(np.floor(np.float64(layer.input_max) / np.float64(scale) + 0.5)))
    x = _pad(store(value, scale, zp, qmin + zp, hi), getattr(layer, "pad", 0))
    fine = _fine_params(layer)
    return x if fine is None else store(x, *fine)


def _conv(layer, value, constants):
    """A quantized conv (or dense-as-1x1-conv) -> :class:`Pending` (fp32 requantization)."""
    x = _input_of(layer, value)
    dense = isinstance(layer, QuantizedDenseAsConv)
    if dense:  # (N, in) -> (N, 1, 1, in), a 1x1 conv
        x = Quantized(x.q.reshape(-1, 1, 1, x.q.shape[-1]), x.scale, x.zero_point)
    acc = _conv_acc(x, constants.kernel, constants.strides, constants.depthwise) + constants.bias
    if dense:
        acc = acc.reshape(-1, acc.shape[-1])

    def requantize(scale, zero_point):
        multiplier = (constants.acc_scale / scale).astype(np.float32)
        return np.rint(acc.astype(np.float32) * multiplier).astype(np.int64) + zero_point

    return Pending(requantize, relu=constants.relu)


def _add(a, b):
    """XNNPACK's qs8 ADD of two stored int8 tensors -> :class:`Pending`."""
    if not (isinstance(a, Quantized) and isinstance(b, Quantized)):
        raise ExportError("an Add input has no int8 range of its own (place a RangeFakeQuant before the Add).")

    def requantize(scale, zero_point):
        ratio_a, ratio_b = np.float32(a.scale / scale), np.float32(b.scale / scale)
        exponent = int(np.frexp(max(ratio_a, ratio_b))[1]) - 1  # max ratio = m * 2^exponent, m in [1, 2)
        shift = ADD_MULTIPLIER_BITS - exponent
        mult_a = int(np.rint(ratio_a * np.float32(2.0 ** shift)))
        mult_b = int(np.rint(ratio_b * np.float32(2.0 ** shift)))
        bias = (1 << (shift - 1)) - mult_a * a.zero_point - mult_b * b.zero_point
        return ((bias + a.q * mult_a + b.q * mult_b) >> shift) + zero_point

    return Pending(requantize)


def quantize_multiplier(m):
    """TFLite's ``QuantizeMultiplier``: ``m = q * 2^(shift - 31)``, ``q`` an int32 in [2^30, 2^31)."""
    if m == 0:
        return 0, 0
    fraction, shift = np.frexp(np.float64(m))
    q = int(np.round(fraction * (1 << 31)))
    if q == 1 << 31:
        q, shift = q // 2, shift + 1
    return q, int(shift)


def multiply_by_quantized_multiplier(x, multiplier, shift):
    """gemmlowp's ``SaturatingRoundingDoublingHighMul`` then ``RoundingDivideByPOT`` (int64 ``x``)."""
    x = x * (1 << max(shift, 0))
    product = x * multiplier
    nudged = product + np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = np.sign(nudged) * (np.abs(nudged) >> 31)  # C division: truncation toward zero
    exponent = max(-shift, 0)
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> exponent) + ((high & mask) > threshold)


def _prelu(layer, x):
    """TFLite's builtin int8 PRELU (not delegated to XNNPACK) -> :class:`Pending`.

    The slope is stored as int8, symmetric per tensor (``scale = max|alpha| / 127``);
    positive inputs are rescaled by ``s_in / s_out``, negative ones by
    ``s_in * s_alpha / s_out``, each with a gemmlowp fixed-point multiplier.
    """
    x = _as_quantized(layer, x)
    alpha = layer.alpha.numpy().astype(np.float32)
    alpha_scale = np.float32(np.abs(alpha).max() / np.float32(127)) or np.float32(1)
    magnitude = np.floor(np.abs(alpha) * np.float32(1 / alpha_scale) + np.float32(0.5))
    alpha_int = np.broadcast_to(np.sign(alpha) * magnitude, (1, 1, 1, x.q.shape[-1])).astype(np.int64)
    centred = x.q - x.zero_point

    def requantize(scale, zero_point):
        positive = multiply_by_quantized_multiplier(
            centred, *quantize_multiplier(np.float64(x.scale) / np.float64(scale)))
        negative = multiply_by_quantized_multiplier(
            centred * alpha_int, *quantize_multiplier(np.float64(x.scale) * alpha_scale / np.float64(scale)))
        return np.where(centred >= 0, positive, negative) + zero_point

    return Pending(requantize)


def _mean(x, axes, keepdims):
    """XNNPACK's qs8 MEAN over ``axes`` -> :class:`Pending`: the int8 sum, then in float32
    ``rint(sum * m + b)`` with ``m = s_in / (s_out * n)`` and ``b = z_out - (n * z_in) * m``."""
    total = x.q.sum(axis=axes, keepdims=keepdims)  # |total| <= 128 n: exact in float32 below n = 2^17
    count = int(np.prod([x.q.shape[a] for a in axes]))

    def requantize(scale, zero_point):  # a mean of one value in its own scale: m = 1, b = 0, a copy
        multiplier = np.float32(x.scale / np.float32(scale * np.float32(count)))
        bias = np.float32(np.float32(zero_point) - np.float32(count * x.zero_point) * multiplier)
        return np.rint(total.astype(np.float32) * multiplier + bias).astype(np.int64)

    return Pending(requantize)


def _moved(value, fn):
    """``fn`` (a value-moving op on :class:`Quantized`) applied now, or after the pending rounding."""
    if isinstance(value, Pending):
        return dataclasses.replace(value, post=value.post + (fn,))
    if isinstance(value, Quantized):
        return fn(value)
    raise ExportError("a value-moving layer reads the float model input; quantize it first.")


def _reshaped(shape):
    return lambda x: Quantized(x.q.reshape((x.q.shape[0], *shape)), x.scale, x.zero_point)


def _max_pool(layer):
    def pool(x):
        pad = 1 if type(layer).__name__ == "PaddedMaxPool" else 0
        x = _pad(x, pad)
        pooled = tf.nn.max_pool2d(tf.constant(x.q, tf.float64), layer.pool_size, layer.strides, "VALID")
        return Quantized(np.rint(pooled.numpy()).astype(np.int64), x.scale, x.zero_point)
    if layer.padding != "valid":
        raise ExportError(f"layer {layer.name!r}: only 'valid' (or explicitly padded) max pooling is emulated.")
    return pool


def _relu(value):
    if isinstance(value, Pending):
        return dataclasses.replace(value, relu=True)
    return Quantized(np.maximum(value.q, value.zero_point), value.scale, value.zero_point)


def _pixel_shuffle(layer, features, lr):
    """``depth_to_space(features + lr)``: an ADD (``lr`` broadcast on r*r channels), then a move."""
    r = layer.scale
    lr = Quantized(np.broadcast_to(lr.q, features.q.shape), lr.scale, lr.zero_point) if isinstance(
        lr, Quantized) else lr
    added = _add(features, lr)
    shuffle = lambda x: Quantized(tf.nn.depth_to_space(tf.constant(x.q), r).numpy(), x.scale, x.zero_point)  # noqa: E731
    return dataclasses.replace(added, post=(shuffle,))


def _layer(layer, args, convs):
    """One export-graph layer on emulated values (``convs``: :class:`ConvConstants` by layer id)."""
    x = args[0]
    if isinstance(layer, CONV_LAYERS):
        return _conv(layer, x, convs[id(layer)])
    if isinstance(layer, (RangeFakeQuant, LearnedStepContainer)):
        return store(x, *_storage_params(layer))
    if isinstance(layer, keras.layers.Add):
        if len(args) != 2:
            raise ExportError(f"layer {layer.name!r}: only two-input Add is emulated.")
        return _add(*args)
    if isinstance(layer, keras.layers.GlobalAveragePooling2D):
        return _mean(_as_quantized(layer, x), (1, 2), layer.keepdims)
    if isinstance(layer, keras.layers.ReLU) or (isinstance(layer, keras.layers.Activation)
                                                 and layer.get_config().get("activation") == "relu"):
        return _relu(x)
    if isinstance(layer, keras.layers.MaxPooling2D):
        return _moved(x, _max_pool(layer))
    if isinstance(layer, keras.layers.ZeroPadding2D):
        (top, bottom), (left, right) = layer.padding
        return _moved(x, lambda v: Quantized(np.pad(v.q, [(0, 0), (top, bottom), (left, right), (0, 0)],
                                                     constant_values=v.zero_point), v.scale, v.zero_point))
    if isinstance(layer, (keras.layers.Flatten, keras.layers.Reshape)):
        return _moved(x, _reshaped(tuple(layer.compute_output_shape((1, *_shape(x)))[1:])))
    if isinstance(layer, keras.layers.Dropout):
        return x
    if isinstance(layer, keras.layers.PReLU):
        return _prelu(layer, x)
    if type(layer).__name__ == "PixelShuffleResidual":
        return _pixel_shuffle(layer, *args)
    raise ExportError(f"layer {layer.name!r} of type {type(layer).__name__} has no integer emulation.")


def _as_quantized(layer, value):
    if not isinstance(value, Quantized):
        raise ExportError(f"layer {layer.name!r} reads a tensor without an int8 range of its own.")
    return value


def _shape(value):
    if isinstance(value, Quantized):
        return value.q.shape[1:]
    raise ExportError("a reshape reads a tensor whose int8 values are not stored yet.")


def _shared_storage(steps):
    """``{tensor key: (scale, zero_point)}`` for tensors that several quantizers read with different scales.

    TFLite stores such a tensor once, in the scale of the quantizer that comes *last* in
    the graph, and gives the others a QUANTIZE from it (a second rounding).
    """
    readers = {}
    for layer, _, in_keys, _ in steps:
        params = _storage_params(layer)
        if params is not None:
            for k in in_keys:
                readers.setdefault(k, []).append(params)
    return {k: params[-1] for k, params in readers.items() if len(set(params)) > 1}


class Program:
    """The export ``graph`` prepared for integer runs, once: its layer order, the storage of
    shared tensors and every conv's :class:`ConvConstants`. ``program(x)`` runs a batch."""

    def __init__(self, graph):
        self.graph = graph
        self.alias = {}
        self.steps = flat_steps(graph, self.alias, [])
        self.shared = _shared_storage(self.steps)
        self.convs = {id(layer): ConvConstants.of(layer) for layer, *_ in self.steps if isinstance(layer, CONV_LAYERS)}

    def __call__(self, x):
        """Integer outputs on float images ``x`` (N, H, W, C): :class:`Quantized` (the model output's
        int8 integers with scale and zero point; ``.dequantize()`` for float values)."""
        values = {id(t): np.asarray(x, np.float32) for t in self.graph.inputs}
        for layer, _, in_keys, out_keys in self.steps:
            for k in in_keys:
                if k in self.shared and not isinstance(values[k], Quantized):
                    values[k] = store(values[k], *self.shared[k])
            outputs = _layer(layer, [values[k] for k in in_keys], self.convs)
            for k, out in zip(out_keys, outputs if isinstance(outputs, (list, tuple)) else [outputs]):
                values[k] = out
        (out,) = [values[self.alias.get(id(t), id(t))] for t in keras.tree.flatten(self.graph.outputs)]
        if not isinstance(out, Quantized):
            raise ExportError("the model output has no int8 range (the export places a RangeFakeQuant there).")
        return out


def run(graph, x):
    """Integer outputs of the export ``graph`` on float images ``x`` (N, H, W, C); see :class:`Program`."""
    return Program(graph)(x)
