"""quantize_model: wrapping, precision rules, input signedness, deploy exactness, serialization."""

import numpy as np
import pytest

import keras
from repq import models
import repq
from repq.qat import PrecisionRule, QuantDense, QuantRepConv, quantize_model, quantized_layers
from repq.qat.deploy import QuantizedConv2D
from repq.quantizers import integer_range
from repq.graph import all_layers
from tests.conftest import randomize_norms


def small(name, **kw):
    if name.startswith("ecbsr"):
        return models.create_model(name, input_shape=(12, 12, 1), **kw)
    return models.create_model(name, num_classes=10, input_shape=(32, 32, 3), **kw)


def prepared_qat(name, bits=4, bn="repq", seed=0):
    model = small(name)
    qat = quantize_model(model, bits, bits, bn=bn)
    x = np.random.default_rng(seed).normal(size=(4, *model.input_shape[1:])).astype("float32")
    qat(x, training=True)  # first batch: activation step init + BN statistics
    randomize_norms(qat, seed)
    return qat, x


@pytest.mark.parametrize("name,first,last", [
    ("repvgg_a0", (4, 8), (4, 4)),        # RepVGG: only the first layer's input is 8-bit
    ("ac_resnet18", (8, 8), (4, 4)),      # AC-ResNet-18: first layer 8-bit
    ("orepa_resnet18", (8, 8), (8, 8)),   # OREPA-ResNet-18: first and last fully 8-bit
    ("ecbsr_m4c16_x2", (8, 8), (8, 8)),   # ECBSR: first and last fully 8-bit
])
def test_precision_rules_follow_the_seed(name, first, last):
    layers = quantized_layers(quantize_model(small(name), 4, 4))
    assert (layers[0].weight_bits, layers[0].act_bits) == first
    assert (layers[-1].weight_bits, layers[-1].act_bits) == last
    assert all((l.weight_bits, l.act_bits) == (4, 4) for l in layers[1:-1])


def test_precision_rule_can_be_overridden():
    rule = PrecisionRule(first_input=False, first_weight=False, last_input=False, last_weight=False)
    layers = quantized_layers(quantize_model(small("orepa_resnet18"), 3, 3, rule=rule))
    assert {(l.weight_bits, l.act_bits) for l in layers} == {(3, 3)}


def test_input_grids_are_unsigned_only_after_relu():
    layers = {l.name: l for l in quantized_layers(quantize_model(small("mobilenetv2", width_multiplier=0.5), 4, 4))}
    assert layers["stem"].input_signed                   # normalised image
    assert not layers["block1_0_depthwise"].input_signed  # after relu6
    assert layers["block1_0_expand"].input_signed         # after a linear projection
    assert not layers["classifier"].input_signed          # relu6 -> GAP -> dropout


def test_every_conv_and_dense_is_wrapped_and_shares_nothing_with_the_fp_model():
    fp = small("repvgg_a0")
    qat = quantize_model(fp, 4, 4)
    kinds = [type(l) for l in qat.layers if isinstance(l, (QuantRepConv, QuantDense))]
    assert kinds.count(QuantRepConv) == 22 and kinds.count(QuantDense) == 1
    fp_ids = {id(v) for v in fp.weights}
    assert not any(id(v) in fp_ids for v in qat.weights)


def test_bnest_mode_respects_keep_bn():
    qat = quantize_model(small("resnet18"), 4, 4, bn="bnest")
    modes = {l.name: l.layer.norm_mode for l in quantized_layers(qat) if isinstance(l, QuantRepConv)}
    assert modes["stage4_block1_conv2"] == "bn" and modes["stage4_block1_conv1"] == "bn"
    assert modes["stage1_block0_conv1"] == "bnest"


@pytest.mark.parametrize("name", ["repvgg_a0", "ecbsr_m4c16_x2",
                                  pytest.param("orepa_resnet18", marks=pytest.mark.slow),
                                  pytest.param("mobilenetv2", marks=pytest.mark.slow)])
@pytest.mark.parametrize("bn", ["repq", "bnest"])
def test_deploy_form_is_bit_exact_with_qat_inference(name, bn):
    qat, x = prepared_qat(name, bn=bn)
    deployed = repq.reparametrize(qat)
    assert any(isinstance(l, QuantizedConv2D) for l in all_layers(deployed))
    np.testing.assert_array_equal(np.asarray(qat(x)), np.asarray(deployed(x)))


def test_deployed_weights_lie_on_the_learned_grid():
    qat, _ = prepared_qat("repvgg_a0", bits=4)
    deployed = repq.reparametrize(qat)
    qmin, qmax = integer_range(4, True)
    conv = deployed.get_layer("stage2_block1")
    q = np.asarray(conv.kernel) / np.asarray(conv.weight_step)
    np.testing.assert_allclose(q, np.round(q), atol=1e-4)
    assert q.min() >= qmin - 1e-4 and q.max() <= qmax + 1e-4


def _on_grid_by_hand(values, step, qmin, qmax, model_values):
    """``clip(floor(values / step + 0.5), qmin, qmax) * step``, except near a rounding tie.

    Within 1e-3 steps of a tie the model's own value is taken once checked to be one of the two
    neighbours: float32 rounding there depends on the arithmetic (TF's fake-quant nudges the
    range and multiplies by 1/scale) and may differ between CPU code paths (vector vs. scalar).
    """
    u = values / step
    near_tie = np.abs(u - np.floor(u) - 0.5) < 1e-3
    by_hand = np.clip(np.floor(u + 0.5), qmin, qmax) * step
    model_values = np.broadcast_to(model_values, by_hand.shape)
    neighbours = np.clip(np.floor(u)[..., None] + np.array([0.0, 1.0]), qmin, qmax) * np.asarray(step)[..., None]
    either = np.abs(model_values[..., None] - neighbours).min(-1) <= 1e-5 * np.abs(neighbours).max(-1) + 1e-12
    assert either[near_tie].all()
    return np.where(near_tie, model_values, by_hand)


def test_qat_inference_equals_merge_quantize_conv_by_hand():
    """Independent path: the block's merged kernel, the LSQ grids and the int32 bias grid by hand."""
    from keras import ops
    qat, x = prepared_qat("repvgg_a0", bits=4)
    wrapper = qat.get_layer("stage0")
    block = wrapper.layer
    kernel, bias = (np.asarray(t) for t in block.merged_kernel_and_bias())
    s_w = np.asarray(wrapper.weight_quantizer.positive_step())
    k_q = _on_grid_by_hand(kernel, s_w, -8, 7, np.asarray(wrapper.weight_quantizer(kernel)))
    s_a = float(np.asarray(wrapper.input_quantizer.positive_step()))
    x_q = _on_grid_by_hand(x, s_a, -128, 127, np.asarray(wrapper.input_quantizer(x)))  # first layer input: 8-bit
    bias_step = s_a * s_w  # the int32 bias grid of the integer conv
    bias_q = _on_grid_by_hand(bias, bias_step, -np.inf, np.inf, np.asarray(wrapper.quantize_bias(bias)))
    padded = np.pad(x_q, [(0, 0), (1, 1), (1, 1), (0, 0)])
    y_ref = np.maximum(np.asarray(ops.conv(padded, k_q, padding="valid")) + bias_q, 0)
    y = np.asarray(wrapper(x, training=False))
    assert np.abs(y - y_ref).max() <= 1e-4 * np.abs(y_ref).max()


def test_qat_model_keras_round_trip(tmp_path):
    qat, x = prepared_qat("ecbsr_m4c16_x2")
    qat.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras")
    np.testing.assert_array_equal(np.asarray(qat(x)), np.asarray(loaded(x)))
    deployed = repq.reparametrize(loaded)
    deployed.save(tmp_path / "deploy.keras")
    np.testing.assert_array_equal(np.asarray(qat(x)),
                                  np.asarray(keras.models.load_model(tmp_path / "deploy.keras")(x)))


def test_bn_variance_floor_reaches_every_rep_block_and_survives_a_round_trip(tmp_path):
    """quantize_model(bn_variance_floor=True): every QuantRepConv folds with max(batch, moving) variance in
    training (RepConvBlock.merged_kernel_and_bias is tested against NumPy in test_layers), saved in .keras."""
    model = small("repvgg_a0")
    x = np.random.default_rng(0).normal(size=(4, *model.input_shape[1:])).astype("float32")
    qat = quantize_model(model, 3, 3, bn_variance_floor=True)
    blocks = [l for l in quantized_layers(qat) if isinstance(l, QuantRepConv)]
    assert blocks and all(b.bn_variance_floor for b in blocks)
    assert not any(b.bn_variance_floor for b in quantized_layers(quantize_model(model, 3, 3))
                   if isinstance(b, QuantRepConv))  # default: RepQ-BN as specified
    qat.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras")
    assert all(l.bn_variance_floor for l in quantized_layers(loaded) if isinstance(l, QuantRepConv))
    np.testing.assert_array_equal(np.asarray(qat(x)), np.asarray(loaded(x)))
    plain = next(l for l in quantized_layers(quantize_model(model, 3, 3)) if isinstance(l, QuantRepConv))
    assert "bn_variance_floor" not in plain.get_config()  # the default saves as before this option
    with pytest.raises(ValueError, match="bn_variance_floor applies to RepQ-BN"):
        quantize_model(model, 3, 3, bn="bnest", bn_variance_floor=True)
    block = blocks[1]
    for norm in block.layer.norms:  # a large moving variance: the floor decides the fold
        if norm is not None:
            norm.moving_variance.assign(np.full(norm.moving_variance.shape, 1e3, "float32"))
    inputs = np.random.default_rng(1).normal(size=(4, 8, 8, block.layer.in_channels)).astype("float32")
    floor_kernel, _ = block.float_kernel_and_bias(inputs, training=True)
    moving_kernel, _ = block.float_kernel_and_bias()
    np.testing.assert_allclose(np.asarray(floor_kernel), np.asarray(moving_kernel), rtol=1e-4, atol=1e-7)


def test_merged_lsq_baseline_wraps_plain_convs():
    fp = small("repvgg_a0")
    fp(np.zeros((2, 32, 32, 3), "float32"), training=True)
    qat = quantize_model(repq.reparametrize(fp), 4, 4)
    layers = quantized_layers(qat)
    assert len(layers) == 23 and type(layers[1]).__name__ == "QuantConv2D"
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    qat(x, training=True)
    np.testing.assert_array_equal(np.asarray(qat(x)), np.asarray(repq.reparametrize(qat)(x)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_bits=1), r"Invalid value for argument weight_bits\. Expected an integer in \[2, 8\]\. "
                          r"Received: weight_bits=1$"),
    (dict(act_bits=9), r"argument act_bits\. .* Received: act_bits=9$"),
    (dict(weight_bits=4.0), r"argument weight_bits\. .* Received: weight_bits=4\.0$"),
    (dict(bn="batch"), r"Invalid value for argument bn\. Expected one of .* Received: bn='batch'$"),
])
def test_invalid_quantize_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize_model(small("repvgg_a0"), **kwargs)


def test_model_without_quantizable_layers_is_rejected():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="nothing to quantize|no conv"):
        quantize_model(keras.Model(inputs, keras.layers.ReLU()(inputs)))


def _numpy_fake_quant8(x, lo, hi):
    """TF's fake_quant_with_min_max_vars (8 bits), written out: nudge the range so 0 is on the grid."""
    scale = (hi - lo) / 255.0
    zero_point = np.round(np.clip(-lo / scale, 0, 255))
    nudged_lo, nudged_hi = -zero_point * scale, (255 - zero_point) * scale
    return np.floor((np.clip(x, nudged_lo, nudged_hi) - nudged_lo) / scale + 0.5) * scale + nudged_lo


def test_range_fake_quant_tracks_the_batch_range():
    from repq.qat.range_quant import RangeFakeQuant
    q = RangeFakeQuant(momentum=0.9)
    q(np.array([[-1.0, 2.0, 0.5]], np.float32), training=True)  # first batch sets the range
    np.testing.assert_allclose([q.lo.numpy(), q.hi.numpy()], [-1.0, 2.0])
    q(np.array([[0.5, 4.0]], np.float32), training=True)  # EMA; the batch range is widened to hold 0
    np.testing.assert_allclose([q.lo.numpy(), q.hi.numpy()], [-0.9, 2.2], rtol=1e-6)
    x = np.random.default_rng(0).uniform(-2, 3, 1000).astype(np.float32)  # no exact rounding ties
    np.testing.assert_allclose(q(x, training=False).numpy(), _numpy_fake_quant8(x, -0.9, 2.2), atol=1e-5)
    np.testing.assert_allclose([q.lo.numpy(), q.hi.numpy()], [-0.9, 2.2], rtol=1e-6)  # inference: no update


def test_range_quantizers_sit_where_tflite_holds_int8_tensors():
    """RepVGG: only the GAP input and the logits; ECBSR: model input, every PReLU input, the tail
    conv output, the output."""
    from repq.qat.range_quant import LearnedStepContainer, RangeFakeQuant
    from repq.qat.transform import range_quantizers
    repvgg = quantize_model(models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3)), 4, 4)
    consumers = [n.operation for q in range_quantizers(repvgg) for n in q._outbound_nodes]
    assert len(range_quantizers(repvgg)) == 2
    assert {type(c).__name__ for c in consumers} == {"GlobalAveragePooling2D"}  # + the logits (no consumer)
    ecbsr = quantize_model(models.create_model("ecbsr_m4c16_x2"), 4, 4)
    prelu_blocks = [l for l in ecbsr.layers if getattr(getattr(l, "layer", None), "activation", None) == "prelu"]
    assert prelu_blocks and all(isinstance(l.preact_quantizer, RangeFakeQuant) for l in prelu_blocks)
    # the tail conv output (into the residual add + pixel shuffle) and the output; the model input
    # feeds the head conv and the residual: the residual reads it on the head conv's learned step
    assert len([l for l in ecbsr.layers if isinstance(l, RangeFakeQuant)]) == 2
    containers = [l for l in ecbsr.layers if isinstance(l, LearnedStepContainer)]
    assert len(containers) == 1 and containers[0].leader_layer().name == "ecb_head"
    x = np.random.default_rng(0).uniform(0, 255, (2, 12, 12, 1)).astype(np.float32)
    repq.qat.calibrate(ecbsr, x)
    assert all(float(q.initialized.numpy()) == 1 for q in range_quantizers(ecbsr))


def test_shared_tensor_is_read_on_the_convs_learned_step_and_survives_a_round_trip(tmp_path):
    """ResNet block output -> next conv1 (learned 4-bit step s) and the identity shortcut: the
    shortcut reads fake_quant(x, 0, 255 s), as TFLite stores that tensor; save/load keeps it."""
    from repq.qat.range_quant import LearnedStepContainer
    fp = models.create_model("resnet18", num_classes=10, input_shape=(16, 16, 3))
    randomize_norms(fp)
    qat = quantize_model(fp, 4, 4)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    qat(x, training=True)
    container = next(l for l in qat.layers if isinstance(l, LearnedStepContainer))
    leader = container.leader_layer()
    assert leader.name == container.leader and not leader.input_quantizer.signed  # reads a ReLU output
    step = float(leader.input_quantizer.positive_step().numpy())
    t = np.random.default_rng(1).uniform(-1, 300 * step, (1000,)).astype("float32")
    expected = np.clip(np.floor(t / step + 0.5), 0, 255) * step
    np.testing.assert_allclose(container(t).numpy(), expected, rtol=1e-5, atol=1e-5 * step)
    qat.save(str(tmp_path / "qat.keras"))
    loaded = keras.models.load_model(str(tmp_path / "qat.keras"))
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), qat(x, training=False).numpy())


def test_registered_names_do_not_collide_with_the_ptq_layers():
    """PTQ's QuantConv2D/QuantDense must not replace the QAT wrappers in Keras' registry (loading
    a QAT .keras file in a process that imported repq.ptq failed that way)."""
    import repq.ptq  # noqa: F401
    from repq.qat import QuantConv2D
    assert keras.saving.get_registered_object("repq>QuantConv2D") is QuantConv2D
    assert keras.saving.get_registered_object("repq>QuantDense") is QuantDense


def _with_nested(nested):
    inputs = keras.Input((8, 8, 1))
    x = nested(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))


def test_nested_sequential_is_inlined_and_quantized():
    """A nested Sequential's convs are quantized too (regression: only the head was, silently)."""
    fp = _with_nested(keras.Sequential([keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
                                        keras.layers.Conv2D(4, 3, padding="same")]))
    qat = quantize_model(fp, 4, 4)
    assert [type(l).__name__ for l in quantized_layers(qat)] == ["QuantConv2D", "QuantConv2D", "QuantDense"]
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    qat(x, training=True)
    np.testing.assert_allclose(repq.reparametrize(qat)(x, training=False), qat(x, training=False), atol=1e-5)


def test_nested_functional_model_is_refused():
    inner_in = keras.Input((8, 8, 1))
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 3, padding="same")(inner_in), name="backbone")
    with pytest.raises(ValueError, match="nests the models backbone.*rebuild it flat"):
        quantize_model(_with_nested(inner), 4, 4)


def test_layers_left_float_are_named_in_a_warning():
    """A BatchNormalization after an Add (nothing to fold it into) and a layer class without a quantizer."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Add()([x, x]))
    x = keras.layers.LayerNormalization(name="ln")(x)
    fp = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.warns(UserWarning, match=r"2 layer\(s\) with weights in float: bn \(BatchNormalization\), ln "
                                         r"\(LayerNormalization\)"):
        quantize_model(fp, 4, 4)
