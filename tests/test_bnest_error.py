"""benchmarks/bnest_error.py: per-layer BNEst error on a model's own feature maps, one layer checked by hand."""

import json

import numpy as np
import pytest


def test_reports_every_block_and_the_stems_ratios_match_an_independent_estimate(tmp_path):
    """On an untrained RepVGG-A0 (BNEst) and one mnist5k test batch: one row per rep block; the stem's per-branch
    variance ratios equal a NumPy computation of SPEC B's estimate (``E[X]·ΣW``, ``V[X]·ΣW²`` per input channel)
    against the branch's true batch variance (rel 1e-3, float32 reductions); small maps get their per-position
    input variance."""
    import keras

    from benchmarks import bnest_error
    from repq import models
    from repq.data import get_dataset
    from repq.training import save_model

    keras.utils.set_random_seed(0)
    model = models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3), stem="half",
                                 norm_mode="bnest")  # the main job's layout: 32x32 ends at 2x2
    save_model(model, str(tmp_path / "fp.keras"))
    assert bnest_error.main(["--checkpoint", str(tmp_path / "fp.keras"), "--batches", "1", "--name", "e",
                             "--results_dir", str(tmp_path)]) == 0
    rows = {r["layer"]: r for r in json.loads((tmp_path / "e.json").read_text())["rows"]}
    blocks = [layer for layer in model.layers if isinstance(layer, bnest_error.RepConvBlock)]
    assert list(rows) == [b.name for b in blocks]

    images = np.asarray(next(iter(get_dataset("mnist5k", "test", 64)[0]))[0], dtype=np.float64)
    stem = blocks[0]
    assert stem.name == "stage0" and rows["stage0"]["input_position_var"] is None  # a 32x32 map
    var_c = images.var(axis=(0, 1, 2))  # per input channel
    expected = []
    for (kernel, _), output, norm in zip(stem.branch_kernels(), stem.branch_outputs(images.astype("float32")),
                                         stem.norms):
        if norm is None:
            continue
        w = np.asarray(kernel, dtype=np.float64)  # (kh, kw, C_in, C_out)
        est_var = np.einsum("hwio,i->o", w ** 2, var_c)
        true_var = np.asarray(output, dtype=np.float64).var(axis=(0, 1, 2))
        expected.append(np.median(est_var / (true_var + 1e-8)))
    assert len(expected) == len(rows["stage0"]["branch_var_ratios"]) >= 2
    np.testing.assert_allclose(rows["stage0"]["branch_var_ratios"], expected, rtol=1e-3)
    assert rows["stage0"]["var_ratio"] == pytest.approx(np.mean(expected), rel=1e-3)

    small = [r for r in rows.values() if r["map_size"] <= bnest_error.SMALL_MAP]
    assert small, "the half layout has 4x4 maps in its last stages"
    for row in small:
        assert np.asarray(row["input_position_var"]).shape == (row["map_size"], row["map_size"])
    first = small[0]["layer"]
    inputs = np.asarray(keras.Model(model.inputs, model.get_layer(first).input)(images.astype("float32")),
                        dtype=np.float64)
    by_hand = ((inputs ** 2).mean(axis=0) - inputs.mean(axis=0) ** 2).mean(axis=-1)  # E[x²] − E[x]², per position
    np.testing.assert_allclose(rows[first]["input_position_var"], by_hand, rtol=1e-3, atol=1e-6)
    text = (tmp_path / "e.md").read_text()
    assert "Variance est / true per branch" in text and "Input variance at each position" in text
