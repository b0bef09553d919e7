"""Carried-forward unit inputs/targets (repq.ptq.carry) against the prefix recompute of cache_unit.

After every unit is reconstructed (a few steps, hard-rounded), the carried quantized inputs, FP
inputs and FP targets of the next unit must equal an independent computation from the network
input through ``QuantModel.quant_submodel`` / ``fp_submodel`` up to float round-off.
"""

import keras
import numpy as np
import pytest

from repq.ptq.carry import Carry
from repq.ptq.qmodel import QuantModel
from repq.ptq.reconstruct import ReconConfig, cache_unit, reconstruct_unit
from repq.ptq.units import block_units, layer_units, merge_units

# Round-off tolerance, relative to max |reference| of each tensor. A quantized tensor may also
# differ by whole quantization steps where round-off moves a value across a rounding boundary:
# at most MAX_FLIPPED of its elements, each by at most one step (plus round-off).
RTOL = 1e-5
MAX_FLIPPED = 1e-3


def two_block_model():
    """stem -> 2 residual blocks (the second strided, 1x1 shortcut) -> GAP -> Dense: 4 BRECQ units."""
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    s = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(x)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a_conv1")(s)
    y = keras.layers.Conv2D(8, 3, padding="same", name="a_conv2")(y)
    s = keras.layers.ReLU(name="a_relu")(keras.layers.Add(name="a_add")([y, s]))
    y = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="b_conv1")(s)
    y = keras.layers.Conv2D(16, 3, padding="same", name="b_conv2")(y)
    short = keras.layers.Conv2D(16, 1, strides=2, name="b_short")(s)
    y = keras.layers.ReLU(name="b_relu")(keras.layers.Add(name="b_add")([y, short]))
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(x, keras.layers.Dense(5, name="fc")(y), name="two_block")


def _assert_close(reference, carried, step=None):
    reference, carried = np.asarray(reference), np.asarray(carried)
    assert reference.shape == carried.shape
    scale = max(np.abs(reference).max(), 1e-12)
    diff = np.abs(reference - carried)
    if step is None:
        assert diff.max() <= RTOL * scale
        return
    flipped = diff > RTOL * scale
    assert flipped.mean() <= MAX_FLIPPED
    assert (diff <= step + RTOL * scale).all()


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
        for t, xr, xc in zip(unit.inputs, reference.x_quant, carried.x_quant):
            quant = qm.act_quants.get(t)
            _assert_close(xr, xc, step=abs(float(quant.scale.numpy())) if quant is not None else None)
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
