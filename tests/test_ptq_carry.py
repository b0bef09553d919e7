"""Linear-time PTQ: carried-forward caches and shared step traces change no result.

* After every unit is reconstructed (a few steps, hard-rounded), the carried quantized inputs, FP
  inputs and FP targets of the next unit (repq.ptq.carry) must equal a computation from the network
  input: the FP tensors through the traced ``QuantModel.fp_submodel`` (``cache_unit``), up to float
  round-off; the quantized ones by running every op before the unit again, eagerly like the carry
  (a traced graph may round a value on a rounding tie the other way, and one flipped input step
  moves a whole conv output), so exactly.
* Units of one signature sharing a traced step (repq.ptq.unit_step) end with exactly the weights
  and losses of tracing every unit afresh.
"""

import keras
import numpy as np
import pytest

from repq.ptq.carry import Carry
from repq.ptq.qmodel import QuantModel
from repq.ptq.reconstruct import ReconConfig, cache_unit, reconstruct_unit
from repq.ptq.units import block_units, layer_units, merge_units

# Round-off tolerance, relative to max |reference| of each tensor.
RTOL = 1e-5


def two_block_model(same_blocks=1):
    """stem -> ``same_blocks`` identical residual blocks -> a strided block with a 1x1 shortcut ->
    GAP -> Dense: ``same_blocks + 3`` BRECQ units."""
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    s = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(x)
    for i in range(same_blocks):
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"a{i}_conv1")(s)
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"a{i}_conv2")(y)
        s = keras.layers.ReLU(name=f"a{i}_relu")(keras.layers.Add(name=f"a{i}_add")([y, s]))
    y = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="b_conv1")(s)
    y = keras.layers.Conv2D(16, 3, padding="same", name="b_conv2")(y)
    short = keras.layers.Conv2D(16, 1, strides=2, name="b_short")(s)
    y = keras.layers.ReLU(name="b_relu")(keras.layers.Add(name="b_add")([y, short]))
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(x, keras.layers.Dense(5, name="fc")(y), name="two_block")


def _assert_close(reference, carried):
    reference, carried = np.asarray(reference), np.asarray(carried)
    assert reference.shape == carried.shape
    scale = max(np.abs(reference).max(), 1e-12)
    assert np.abs(reference - carried).max() <= RTOL * scale


def _quantized_inputs(qm, unit, batches):
    """The quantized model's values of ``unit.inputs``, every op before the unit run again from the input."""
    inside = {op.index for op in unit.ops}
    rows = []
    for x in batches:
        values = {qm.graph.input_ids[0]: x}
        for op in qm.graph.ops:
            if all(t in values for t in unit.inputs):
                break
            if op.index not in inside:
                qm.run_ops([op], values)
        rows.append([values[t] for t in unit.inputs])
    return [np.stack([row[i] for row in rows]) for i in range(len(unit.inputs))]


@pytest.mark.parametrize("granularity", ["layer", "block", "merged"])
def test_carried_caches_match_prefix_recompute(granularity):
    keras.utils.set_random_seed(0)
    qm = QuantModel(two_block_model(), 3, 4)
    batches = [np.random.default_rng(i).normal(size=(8, 8, 8, 3)).astype(np.float32) for i in range(3)]
    qm.calibrate(batches)
    if granularity == "layer":
        units = layer_units(qm.graph)  # Add / ReLU / GAP belong to no unit: carried between units
    else:
        units = block_units(qm.graph)
        if granularity == "merged":
            units = merge_units(qm.graph, units, [[0], [1, 2], [3]])
    config = ReconConfig(iters=3, prob=0.5, verbose=0)
    carry = Carry(qm, batches)
    for i, unit in enumerate(units):
        carried = carry.cache(unit, with_fp=True)
        reference = cache_unit(qm, unit, batches, with_fp=True)
        for xr, xc in zip(_quantized_inputs(qm, unit, batches), carried.x_quant):
            np.testing.assert_array_equal(xr, xc)
        for xr, xc in zip(reference.x_fp, carried.x_fp):
            _assert_close(xr, xc)
        _assert_close(reference.target, carried.target)
        reconstruct_unit(qm, unit, carried, config, seed=i)
        carry.advance(unit)


def test_carry_frees_dead_tensors():
    qm = QuantModel(two_block_model(), 4, 4)
    batches = [np.zeros((4, 8, 8, 3), np.float32)]
    qm.calibrate(batches)
    carry = Carry(qm, batches)
    for unit in block_units(qm.graph):
        carry.cache(unit, with_fp=False)
        carry.advance(unit)
        assert set(carry.quant.values) <= {unit.output}  # block boundaries: one tensor crosses


@pytest.mark.parametrize("prob", [1.0, 0.5])
def test_shared_step_trace_equals_fresh_traces(prob):
    batches = [np.random.default_rng(i).normal(size=(8, 8, 8, 3)).astype(np.float32) for i in range(2)]
    config = ReconConfig(iters=4, prob=prob, verbose=0)
    runs = []
    for shared in (True, False):
        qm = QuantModel(two_block_model(same_blocks=3), 3, 4)
        qm.calibrate(batches)
        carry, steps, results = Carry(qm, batches), {} if shared else None, []
        for i, unit in enumerate(block_units(qm.graph)):
            results.append(reconstruct_unit(qm, unit, carry.cache(unit, prob < 1.0), config, seed=i, steps=steps))
            carry.advance(unit)
        runs.append((qm.model.get_weights(), results))
    (w_shared, r_shared), (w_fresh, r_fresh) = runs
    assert [r["traced"] for r in r_shared] == [True, True, False, False, True, True]
    assert [r["loss"] for r in r_shared] == [r["loss"] for r in r_fresh]
    for a, b in zip(w_shared, w_fresh):
        np.testing.assert_array_equal(a, b)
