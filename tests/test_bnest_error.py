"""benchmarks/bnest_error.py: per-layer BNEst error on a model's own feature maps, one layer checked by hand."""

import json

import numpy as np
import pytest


def spec_and_padding_aware_moments(images, kernel, bias, pad, stride):
    """SPEC B's estimate of a conv's output mean/variance per output channel from per-channel input moments, and
    the padding-aware one (only the taps inside the input count at each output position; mean of the positions'
    means, mean of their variances plus the variance of their means), by explicit loops over output positions."""
    mean_c, var_c = images.mean(axis=(0, 1, 2)), images.var(axis=(0, 1, 2))  # (C_in,)
    spec = (np.einsum("hwio,i->o", kernel, mean_c) + bias, np.einsum("hwio,i->o", kernel ** 2, var_c))
    kh, kw = kernel.shape[:2]
    height, width = images.shape[1:3]
    means, variances = [], []
    for i in range((height + 2 * pad - kh) // stride + 1):
        for j in range((width + 2 * pad - kw) // stride + 1):
            rows = np.arange(kh) + i * stride - pad
            cols = np.arange(kw) + j * stride - pad
            inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
            w = kernel * inside[:, :, None, None]
            means.append(np.einsum("hwio,i->o", w, mean_c) + bias)
            variances.append(np.einsum("hwio,i->o", w ** 2, var_c))
    means, variances = np.array(means), np.array(variances)
    return spec, (means.mean(axis=0), variances.mean(axis=0) + means.var(axis=0))


def test_reports_every_block_and_the_stems_errors_match_an_independent_estimate(tmp_path):
    """On an untrained RepVGG-A0 (BNEst, the main job's layout) and two mnist5k test batches: one row per rep block;
    the stem's per-branch variance ratios and its mean errors, for SPEC B's estimate and the padding-aware one, equal
    a NumPy computation of both estimates against the branches' true batch moments, averaged over the batches (ratios
    rel 1e-3: float32 against float64 reductions; mean errors 1e-4 std); small maps get their per-position input variance, checked by hand."""
    import keras

    from benchmarks import bnest_error
    from repq import models
    from repq.data import get_dataset
    from repq.training import save_model

    keras.utils.set_random_seed(0)
    model = models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3), stem="half",
                                 norm_mode="bnest")  # the main job's layout: 32x32 ends at 2x2
    save_model(model, str(tmp_path / "fp.keras"))
    assert bnest_error.main(["--checkpoint", str(tmp_path / "fp.keras"), "--batches", "2", "--name", "e",
                             "--results_dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    rows = {r["layer"]: r for r in report["rows"]}
    blocks = [layer for layer in model.layers if isinstance(layer, bnest_error.RepConvBlock)]
    assert list(rows) == [b.name for b in blocks]
    assert "bnest_error.py --checkpoint" in report["provenance"]["command"]

    batches = [np.asarray(x, dtype=np.float64) for x, _ in get_dataset("mnist5k", "test", 64)[0].take(2)]
    stem = blocks[0]
    assert stem.name == "stage0" and rows["stage0"]["input_position_var"] is None  # a 32x32 map
    ratios, mean_errors = [], []  # per batch: (branches, 2 estimates)
    for images in batches:
        batch_ratios, batch_errors = [], []
        for (kernel, bias), output, norm in zip(stem.branch_kernels(), stem.branch_outputs(images.astype("float32")),
                                                stem.norms):
            if norm is None:
                continue
            output = np.asarray(output, dtype=np.float64)
            true_mean, true_var = output.mean(axis=(0, 1, 2)), output.var(axis=(0, 1, 2))
            estimates = spec_and_padding_aware_moments(images, np.asarray(kernel, np.float64),
                                                       0.0 if bias is None else np.asarray(bias, np.float64),
                                                       stem.pad, stem.strides)
            batch_ratios.append([np.median(var / (true_var + 1e-8)) for _, var in estimates])
            batch_errors.append([np.median(np.abs(mean - true_mean) / np.sqrt(true_var + 1e-8))
                                 for mean, _ in estimates])
        ratios.append(batch_ratios)
        mean_errors.append(batch_errors)
    ratios, mean_errors = np.array(ratios), np.array(mean_errors)
    assert ratios.shape[1] == len(rows["stage0"]["branch_var_ratios"]) >= 2 and stem.strides == 2
    row = rows["stage0"]
    np.testing.assert_allclose(row["branch_var_ratios"], ratios[..., 0].mean(axis=0), rtol=1e-3)
    np.testing.assert_allclose(row["padding_aware_branch_var_ratios"], ratios[..., 1].mean(axis=0), rtol=1e-3)
    assert row["var_ratio"] == pytest.approx(ratios[..., 0].mean(), rel=1e-3)
    # a mean error is a small difference of two float32 means: 1e-4 std absolute
    assert row["mean_error_over_std"] == pytest.approx(mean_errors[..., 0].mean(), abs=1e-4)
    assert row["padding_aware_mean_error_over_std"] == pytest.approx(mean_errors[..., 1].mean(), abs=1e-4)
    assert not np.allclose(ratios[..., 0], ratios[..., 1])  # the border counts at 32x32 with stride 2

    small = [r for r in rows.values() if r["map_size"] <= bnest_error.SMALL_MAP]
    assert small, "the half layout has 4x4 maps in its last stages"
    for row in small:
        assert np.asarray(row["input_position_var"]).shape == (row["map_size"], row["map_size"])
    first = small[0]["layer"]
    probe = keras.Model(model.inputs, model.get_layer(first).input)
    by_hand = []
    for images in batches:
        inputs = np.asarray(probe(images.astype("float32")), dtype=np.float64)
        by_hand.append(((inputs ** 2).mean(axis=0) - inputs.mean(axis=0) ** 2).mean(axis=-1))  # E[x²] − E[x]²
    np.testing.assert_allclose(rows[first]["input_position_var"], np.mean(by_hand, axis=0), rtol=1e-3, atol=1e-6)
    text = (tmp_path / "e.md").read_text()
    assert "Variance est / true per branch" in text and "Input variance at each position" in text
