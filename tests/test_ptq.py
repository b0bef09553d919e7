"""PTQ package tests: AdaRound math, QDrop, MRECG selection, ModCap, determinism, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from repq.ptq import adaround, mrecg
from repq.ptq.driver import quantize_ptq
from repq.ptq.qdrop import drop_mix
from repq.ptq.graph import Graph
from repq.ptq.qmodel import QuantModel
from repq.ptq.reconstruct import ReconConfig, cache_unit, reconstruct_unit
from repq.ptq.units import block_units, layer_units, parse_scheme, scheme_groups
from repq.qat.transform import quantized_layers
from tests.test_ptq_resume import residual_model

# MRECG-anon loss_distribute_all_alg.jpg, MobileNetV2 BRECQ per-unit losses (SPEC Part C §6.4).
MBV2_BRECQ_LOSSES = [1.0, 1.5, 7.0, 4.0, 5.1, 7.4, 5.2, 7.4, 8.1, 9.4, 7.3, 10.1, 14.6, 6.7, 10.9,
                     16.7, 10.7]


def conv_model(seed=0):
    """input (8x8x4) -> 3x3 conv 8 ch -> relu -> 1x1 conv 4 ch: 2 weight layers."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 4))
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    y = keras.layers.Conv2D(4, 1, name="head")(y)
    return keras.Model(x, y, name="tiny")


def data(n, seed):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 4)).astype(np.float32)


def test_rectified_sigmoid_init_gives_fraction():
    w = np.random.default_rng(0).normal(size=(3, 3, 2, 4)).astype(np.float32)
    s = np.full((4,), 0.07, np.float32)
    alpha = adaround.init_alpha(w, s)
    r = w / s - np.floor(w / s)
    np.testing.assert_allclose(adaround.rectified_sigmoid(alpha).numpy(), r, atol=1e-5)


def test_beta_schedule_values():
    values = [float(adaround.beta_schedule(t, 20000)) for t in (4000, 12000, 20000)]
    np.testing.assert_allclose(values, [20.0, 11.0, 2.0], atol=1e-4)
    assert float(adaround.beta_schedule(1, 20000)) == 20.0


def test_qdrop_mask_rate():
    xq, xf = tf.zeros((200, 100)), tf.ones((200, 100))
    mixed = drop_mix(xq, xf, 0.5, keras.random.SeedGenerator(1)).numpy()
    assert abs((mixed == 0).mean() - 0.5) < 0.01  # 20000 Bernoulli(0.5): sd 0.0035
    assert set(np.unique(mixed)) <= {0.0, 1.0}


def _single_conv_setup(bits=3):
    qm = QuantModel(conv_model(), bits, 8)  # the first layer (8-bit weights) is unit 0; 'head' holds ``bits``
    calib = [data(32, 1), data(32, 2)]
    qm.calibrate(calib)
    unit = layer_units(qm.graph)[1]
    return qm, unit, calib


def _unit_mse(qm, unit, x):
    cache = cache_unit(qm, unit, [x], with_fp=False)
    values = dict(zip(unit.inputs, [cache.x_quant[0][0]]))
    y = qm.run_ops(unit.ops, values)[unit.output]
    return float(tf.reduce_mean(tf.square(y - cache.target[0])))


def _integer_codes(wrapper):
    """``W/s`` of a wrapper's stored float kernel (float64, not rounded) and its weight quantizer."""
    quantizer = wrapper.weight_quantizer
    kernel = np.asarray(wrapper.float_kernel_and_bias()[0], np.float64)
    return kernel / np.asarray(quantizer.positive_step(), np.float64), quantizer


def test_adaround_beats_nearest_and_lands_on_grid():
    qm, unit, calib = _single_conv_setup(bits=3)
    held_out = data(64, 9)
    mse_rtn = _unit_mse(qm, unit, held_out)
    cache = cache_unit(qm, unit, calib, with_fp=False)
    result = reconstruct_unit(qm, unit, cache, ReconConfig(iters=300, learn_scales=False, verbose=0))
    mse_ada = _unit_mse(qm, unit, held_out)
    assert mse_ada < mse_rtn
    assert result["curve"]["step"] == list(range(15, 301, 15))  # ~20 points, the last step included
    assert all(np.isfinite(result["curve"]["rec"])) and min(result["curve"]["rec"]) > 0
    codes, quantizer = _integer_codes(qm.weight_layers[unit.weight_ops[0].index])
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert codes.min() >= quantizer.qmin - 1e-3 and codes.max() <= quantizer.qmax + 1e-3


def test_block_units_resnet_like():
    units = block_units(Graph(residual_model()))
    assert [[op.name for op in u.ops if op.has_weights] for u in units] == [
        ["stem"], ["b_conv1", "b_conv2"], ["fc"]]
    assert [op.name for op in units[1].ops][-2:] == ["b_relu", "gap"]


def test_mrecg_oscillation_rule_on_mbv2_losses():
    boundaries = mrecg.select_oscillation(MBV2_BRECQ_LOSSES, k=7)
    assert boundaries == [2, 5, 9, 12, 15]


def test_mrecg_greedy_rule_reproduces_released_mbv2_scheme():
    groups = mrecg.loss_groups(MBV2_BRECQ_LOSSES, k=7)  # U1..U17 (U18, the head, is not plotted)
    merged = [g for g in groups if len(g) > 1]
    assert merged == [[2, 3], [5, 6], [8, 9, 10], [11, 12, 13], [15, 16]]
    assert groups + [[17]] == scheme_groups(mrecg.RELEASED_SCHEMES["mobilenetv2"], 18)


def test_mrecg_loss_never_merges_an_8bit_edge_unit():
    """Units [stem, block, block, fc]; losses [0, 5, 4, 0.1]: drops 1 (block -> block) and 3.9 (block -> 8-bit fc).
    Over every boundary the greedy rule merges (2, 3); the driver allows only (1, 2)."""
    losses = [0.0, 5.0, 4.0, 0.1]
    assert mrecg.loss_groups(losses, k=1) == [[0], [1], [2, 3]]
    _, report = quantize_ptq(residual_model(blocks=2), data(16, 5), "mrecg_loss", 4, 4, iters=2, batch_size=8,
                             topk=1, baseline_losses=losses, verbose=0)
    assert report["scheme"] == [0, (1, 2), 3] and len(report["unit_losses"]) == 3


def test_mrecg_loss_keeps_its_search_pass_when_it_merges_nothing(monkeypatch):
    """topk=0 selects no merge: the final pass would repeat the QDrop search pass step for step, so the
    search pass is the result (one pass, the QDrop model to the bit); with a merge both passes run."""
    from repq.ptq import driver

    passes = []
    real = driver.reconstruct_units

    def counting(*args, **kwargs):
        passes.append(len(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "reconstruct_units", counting)
    model, x = residual_model(blocks=2), data(16, 5)
    args = dict(weight_bits=3, act_bits=4, iters=3, batch_size=8, seed=1, verbose=0)
    qdrop, _ = quantize_ptq(model, x, "qdrop", **args)
    assert passes == [4]
    mrecg_none, report = quantize_ptq(model, x, "mrecg_loss", topk=0, **args)
    assert passes == [4, 4] and report["search_pass_kept"] and report["scheme"] == [0, 1, 2, 3]
    np.testing.assert_array_equal(mrecg_none(x).numpy(), qdrop(x).numpy())
    assert report["unit_losses"] == report["baseline_unit_losses"]
    _, merged = quantize_ptq(model, x, "mrecg_loss", topk=1, **args)
    assert len(merged["unit_losses"]) == 3 and not merged["search_pass_kept"]
    assert passes == [4, 4, 4, 3]  # the search pass over 4 units, then the final pass over 3


def test_scheme_parsing():
    assert parse_scheme("0,(1,2),3") == [0, (1, 2), 3]
    assert scheme_groups(parse_scheme("0,(1,2),3"), 4) == [[0], [1, 2], [3]]
    with pytest.raises(ValueError):
        scheme_groups([0, (1, 2)], 4)


def test_modcap_by_hand():
    graph = Graph(residual_model())
    unit = block_units(graph)[1]
    by_hand = (3 * 3 * 8 * 8 * 4 + 3 * 3 * 8 * 8 * 4) * 1.0  # two 3x3 8->8 convs, 4 bits, stride 1
    assert mrecg.modcap(unit, lambda op: 4) == pytest.approx(by_hand)
    half = mrecg.modcap(unit, lambda op: 4, stride_factor=lambda s: 0.5)
    assert half == pytest.approx(by_hand / 2)


def test_modcap_selection_resnet18_released_scheme():
    """ModCap (f = 1/stride) on ResNet-18 selects the released merges (stage1->2, stage2->3)."""
    from repq import models
    import repq

    model = repq.reparametrize(models.create_model("resnet18", num_classes=10, input_shape=(32, 32, 3)))
    qm = QuantModel(model, 4, 4)
    units = block_units(qm.graph)
    groups, _ = mrecg.modcap_groups(units, lambda op: qm.weight_layers[op.index].weight_bits, 2,
                                    edge_ops=qm.edge_ops)
    assert groups == scheme_groups(mrecg.RELEASED_SCHEMES["resnet18"], 10)


def test_quantize_ptq_deterministic_and_on_grid():
    model, x = residual_model(), data(32, 3)
    outs = []
    for _ in range(2):
        qmodel, report = quantize_ptq(model, x, "qdrop", 3, 4, iters=20, batch_size=16, seed=3, verbose=0)
        outs.append(qmodel(x).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    assert len(report["unit_losses"]) == 3
    for wrapper in quantized_layers(qmodel):
        codes, _ = _integer_codes(wrapper)
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)


# residual_model: 4 layer units (AdaRound), 3 block units (BRECQ/QDrop); MRECG merges no boundary next to
# the 8-bit first/last units (edge_ops), the only ones this model has, so both variants keep 3 units
@pytest.mark.parametrize("method, units", [("rtn", 0), ("adaround", 4), ("brecq", 3), ("mrecg_modcap", 3),
                                           ("mrecg_loss", 3)])
def test_methods_reconstruct_their_units_onto_the_grid(method, units):
    """Each method reconstructs its own partition, ends with every weight on its integer grid, and moves
    the weights away from round-to-nearest exactly when it reconstructs."""
    model, x = residual_model(), data(32, 4)
    rtn, _ = quantize_ptq(model, x, "rtn", 4, 4, batch_size=16, verbose=0)
    qmodel, report = quantize_ptq(model, x, method, 4, 4, iters=5, batch_size=16, topk=1, verbose=0)
    assert len(report["unit_losses"]) == units and all(np.isfinite(report["unit_losses"]))
    moved = False
    for wrapper, nearest in zip(quantized_layers(qmodel), quantized_layers(rtn), strict=True):
        kernel = np.asarray(wrapper.quantized_kernel_and_bias()[0], np.float64)
        codes = kernel / np.asarray(wrapper.weight_quantizer.positive_step(), np.float64)
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        quantizer = wrapper.weight_quantizer
        assert quantizer.qmin <= np.round(codes).min() and np.round(codes).max() <= quantizer.qmax
        moved |= not np.array_equal(kernel, np.asarray(nearest.quantized_kernel_and_bias()[0], np.float64))
    assert moved == (units > 0)


def test_clear_errors():
    model = conv_model()
    with pytest.raises(ValueError, match="Invalid value for argument weight_bits.*Received: weight_bits=1"):
        quantize_ptq(model, data(4, 0), "rtn", weight_bits=1)
    with pytest.raises(ValueError, match="Invalid value for argument act_bits.*Received: act_bits=9"):
        quantize_ptq(model, data(4, 0), "rtn", act_bits=9)
    with pytest.raises(ValueError, match="empty"):
        quantize_ptq(model, [], "rtn")
    with pytest.raises(ValueError, match="unknown PTQ method"):
        quantize_ptq(model, data(4, 0), "gptq")
    x = keras.Input((8, 8, 4))
    bad = keras.Model(x, keras.layers.LayerNormalization(name="ln")(keras.layers.Conv2D(2, 1)(x)))
    with pytest.raises(TypeError, match="ln"):
        quantize_ptq(bad, data(4, 0), "rtn")
