"""repq.export.integer_emulation's rounding rules, op by op, against LiteRT on tiny int8 graphs.

Each test converts a one-op TF graph (fake-quant ops give every tensor its int8
range), runs it on LiteRT's default CPU runtime and on random int8 inputs
compares the runtime's integers with the emulation's, which are computed from
the float ranges and constants alone (the .tflite is read only to be run).
Whole zoo models are checked in tests/test_export.py.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from repq.export import integer_emulation as emu

FQ = tf.quantization.fake_quant_with_min_max_vars
FQC = tf.quantization.fake_quant_with_min_max_vars_per_channel
IMAGES = 48


def _litert(fn, shapes, inputs):
    """Convert ``fn`` (float tensors -> float tensor, fake-quants inside) and run it on int8 ``inputs``."""
    specs = [tf.TensorSpec((1, *s), tf.float32) for s in shapes]
    concrete = tf.function(fn, input_signature=specs).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    it = Interpreter(model_content=converter.convert(), experimental_op_resolver_type=OpResolverType.AUTO)
    it.allocate_tensors()
    outputs = []
    for example in zip(*inputs):
        for detail, x in zip(it.get_input_details(), example):
            it.set_tensor(detail["index"], x[None].astype(np.int8))
        it.invoke()
        outputs.append(it.get_tensor(it.get_output_details()[0]["index"])[0].astype(np.int64))
    return np.stack(outputs)


def _int8(rng, shape):
    return rng.integers(-128, 128, (IMAGES, *shape))


def _stored(q, lo, hi):
    return emu.Quantized(q, *emu.fake_quant_params(lo, hi))


def _emulated(pending, lo, hi):
    return emu.store(pending, *emu.fake_quant_params(lo, hi)).q


def test_fake_quant_params_follow_the_converters_nudging():
    # [-0.7, 1.3]: scale 2/255, zero point round(0.7 / scale) - 128 = 89 - 128
    scale, zero_point = emu.fake_quant_params(-0.7, 1.3)
    assert np.isclose(scale, 2.0 / 255, rtol=1e-6) and zero_point == -39
    assert emu.fake_quant_params(0.0, 2.55) == (np.float32(0.01), -128)
    # ties: 1.1 / scale = 82.5 (in float64 from the float32 range) and 1 / (2 / 255) = 127.5 round up
    assert emu.fake_quant_params(-1.1, 2.3)[1] == 83 - 128
    assert emu.fake_quant_params(-1.0, 1.0)[1] == 0


@pytest.mark.parametrize("relu", [False, True])
def test_conv_fp32_requantization(relu):
    rng = np.random.default_rng(1)
    s_in, w_steps = np.float32(0.0371), rng.uniform(0.01, 0.05, 8).astype(np.float32)
    w_int = rng.integers(-8, 8, (3, 3, 16, 8))
    bias_int = rng.integers(-500, 500, 8)
    kernel, bias = (w_int * w_steps).astype(np.float32), (bias_int * (s_in * w_steps)).astype(np.float32)
    lo, hi = (0.0, 1.9) if relu else (-0.7, 1.3)

    def fn(x):
        x = FQ(x, -128 * s_in, 127 * s_in)
        y = tf.nn.conv2d(x, FQC(kernel, -128 * w_steps, 127 * w_steps), 1, "VALID") + bias
        return FQ(tf.nn.relu(y) if relu else y, lo, hi)

    x = _int8(rng, (6, 6, 16))
    expected = _litert(fn, [(6, 6, 16)], [x])
    x_q = emu.Quantized(x, *emu.fake_quant_params(-128 * s_in, 127 * s_in))
    acc = emu._conv_acc(x_q, w_int, 1) + bias_int
    scale = (x_q.scale * w_steps).astype(np.float32)
    pending = emu.Pending(lambda s, z: np.rint(acc.astype(np.float32) * (scale / s).astype(np.float32))
                          .astype(np.int64) + z, relu=relu)
    np.testing.assert_array_equal(_emulated(pending, lo, hi), expected)


@pytest.mark.parametrize("ranges", [((0.0, 2.55), (0.0, 2.55), (0.0, 5.1)),        # exact ties everywhere
                                    ((-0.6, 1.0), (-2.3, 0.4), (-1.9, 2.8)),
                                    ((-1.0, 1.0), (0.0, 4.0), (0.0, 0.8))])      # zero point on a tie
def test_add_fixed_point(ranges):
    rng = np.random.default_rng(2)
    (ra, rb, ro) = ranges
    a, b = _int8(rng, (64,)), _int8(rng, (64,))
    expected = _litert(lambda x, y: FQ(FQ(x, *ra) + FQ(y, *rb), *ro), [(64,), (64,)], [a, b])
    got = _emulated(emu._add(_stored(a, *ra), _stored(b, *rb)), *ro)
    np.testing.assert_array_equal(got, expected)
    if ranges[0] == ranges[1]:  # the ties are real: fp32 round-half-even misses many of them
        s_a, z_a = emu.fake_quant_params(*ra)
        s_o, z_o = emu.fake_quant_params(*ro)
        fp32 = np.rint(((a - z_a) + (b - z_a)).astype(np.float32) * np.float32(s_a / s_o)) + z_o
        assert (np.clip(fp32, -128, 127) != expected).mean() > 0.1


@pytest.mark.parametrize("size,range_in", [(4, (0.0, 3.0)), (3, (-1.5, 2.0))])
def test_mean_fp32(size, range_in):
    rng = np.random.default_rng(3)
    x = _int8(rng, (size, size, 16))
    range_out = (0.0, 1.7)
    expected = _litert(lambda t: FQ(tf.reduce_mean(FQ(t, *range_in), axis=(1, 2)), *range_out),
                       [(size, size, 16)], [x])
    got = _emulated(emu._mean(_stored(x, *range_in), (1, 2), False), *range_out)
    np.testing.assert_array_equal(got, expected)


def _every_window_sum(size, channels):
    """int8 inputs (N, size, size, channels) whose windows take every sum of ``size**2`` int8 values once."""
    n = size * size
    totals = np.arange(-128 * n, 127 * n + 1)
    totals = np.concatenate([totals, totals[: (-len(totals)) % channels]])
    base = totals[:, None] // n + np.zeros((1, n), np.int64)
    q = base + (np.arange(n)[None, :] < (totals - base[:, 0] * n)[:, None])
    return q.reshape(-1, channels, size, size).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("size,range_in,range_out", [
    (7, (0.0, 7.081465786322951), (0.0, 1.4111923822201788)),  # a ResNet GAP: unsigned 7x7 into a dense's step
    (4, (-1.3244289114904835, 3.5490679825665232), None)])     # the output keeps the input's scale
def test_mean_rounds_with_the_zero_points_inside(size, range_in, range_out):
    """Every possible window sum: the zero points enter before the rounding (``rint(sum q * m + b)``), so
    ties go to the even output integer; rounding the centred sum and adding ``z_out`` after differs here."""
    range_out = range_out or range_in
    x = _every_window_sum(size, 16)
    expected = _litert(lambda t: FQ(tf.reduce_mean(FQ(t, *range_in), axis=(1, 2)), *range_out), [(size, size, 16)], [x])
    got = _emulated(emu._mean(_stored(x, *range_in), (1, 2), False), *range_out)
    np.testing.assert_array_equal(got, expected)
    (s_in, z_in), (s_out, z_out) = emu.fake_quant_params(*range_in), emu.fake_quant_params(*range_out)
    centred = np.rint((x - z_in).sum(axis=(1, 2)).astype(np.float32)
                      * np.float32(s_in / np.float32(s_out * np.float32(size * size)))) + z_out
    assert (np.clip(centred, -128, 127) != expected).any()  # the case tells the two rules apart


def test_quantize_fixed_point():
    rng = np.random.default_rng(4)
    range_in, range_out = (-1.1, 2.3), (-0.4, 1.9)
    x = _int8(rng, (4, 4, 8))
    # a PAD between two fake-quants keeps both (a QUANTIZE op); the border is the zero point
    expected = _litert(lambda t: FQ(tf.pad(FQ(t, *range_in), [[0, 0], [1, 1], [1, 1], [0, 0]]), *range_out),
                       [(4, 4, 8)], [x])[:, 1:-1, 1:-1]
    got = emu.requantize_int8(_stored(x, *range_in), *emu.fake_quant_params(*range_out))
    np.testing.assert_array_equal(np.clip(got, -128, 127), expected)


def test_prelu_gemmlowp():
    rng = np.random.default_rng(5)
    prelu = keras.layers.PReLU(shared_axes=[1, 2])
    prelu.build((None, 4, 4, 16))
    prelu.set_weights([rng.uniform(-0.3, 0.6, (1, 1, 16)).astype(np.float32)])
    range_in, range_out = (-2.1, 1.4), (-0.8, 1.6)
    x = _int8(rng, (4, 4, 16))
    expected = _litert(lambda t: FQ(prelu(FQ(t, *range_in)), *range_out), [(4, 4, 16)], [x])
    got = _emulated(emu._prelu(prelu, _stored(x, *range_in)), *range_out)
    np.testing.assert_array_equal(got, expected)


def test_multiply_by_quantized_multiplier_is_exact_rounding_away_from_ties():
    rng = np.random.default_rng(6)
    x = rng.integers(-20000, 20000, 5000)
    m = 0.00371
    got = emu.multiply_by_quantized_multiplier(x, *emu.quantize_multiplier(m))
    exact = x * m
    # gemmlowp rounds twice (high-mul, then the shift): it may differ from exact rounding only within
    # about 2^shift = 2^-8 of a .5 tie
    away = np.abs(exact - np.round(exact)) < 0.5 - 2.0 ** -7
    np.testing.assert_array_equal(got[away], np.round(exact[away]))


@pytest.mark.parametrize("case", ["4-bit weights", "8-bit, 16 channels", "8-bit worst case, 515 channels"])
def test_conv_accumulator_is_exact_in_the_float_type_it_picks(case):
    """``_conv_acc`` equals an int64 sum over the patches (numpy, independent) whichever float type
    the bound picks: float32 below 2^24, float64 above (the worst case: sums past 2^24 that are
    odd, which float32 cannot hold)."""
    rng = np.random.default_rng(0)
    if case == "8-bit worst case, 515 channels":
        q = np.full((1, 7, 7, 515), 124)
        kernel = np.full((3, 3, 515, 2), 127.0)
    else:
        weight_max = 7 if case == "4-bit weights" else 127
        q = rng.integers(-128, 128, size=(2, 7, 7, 16))
        q[0, :3, :3, :] = 127  # a patch at the bound's extreme input
        kernel = rng.integers(-weight_max, weight_max + 1, size=(3, 3, 16, 5)).astype(np.float64)
    centered = q - 3
    acc = emu._conv_acc(emu.Quantized(q, np.float32(0.1), 3), kernel, 2)
    reference = np.zeros(acc.shape, np.int64)
    for i in range(acc.shape[1]):
        for j in range(acc.shape[2]):
            patch = centered[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
            reference[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, kernel.astype(np.int64))
    np.testing.assert_array_equal(acc, reference)
    worst = case.startswith("8-bit worst")
    assert emu.conv_dtype(3, kernel) is (tf.float64 if worst else tf.float32)
    if worst:
        assert reference.max() > 2 ** 24 and reference.max() % 2 == 1  # not a float32


def test_mean_of_one_value_in_its_own_scale_is_a_copy():
    """A 1x1 window kept in its input's scale: m = 1 and b = 0, so every int8 value comes back unchanged."""
    scale, zero_point = emu.fake_quant_params(-1.3, 3.5)
    x = emu.Quantized(np.arange(-128, 128).reshape(256, 1, 1, 1), scale, zero_point)
    np.testing.assert_array_equal(emu._mean(x, (1, 2), False).requantize(scale, zero_point), x.q.reshape(256, 1))
