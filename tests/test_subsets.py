"""Honest subsets (issue 17, item 2): every "first N" and calibration sample spans the classes, and
the reports say how many classes they cover."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from repq.cli import export
from repq.cli import ptq
from repq.data import calibration_batches, folder, get_dataset, subsets
from repq.qat import quantize_model
from tests.test_ptq_resume import residual_model, run_ptq


def _labels(ds):
    return np.concatenate([y.numpy() for _, y in ds])


# ---------------------------------------------------------------------------- stratified_order
@pytest.mark.parametrize("counts", [(50, 50, 50, 50), (5, 40, 120, 7, 1), (1,) * 10 + (300,)])
@pytest.mark.parametrize("seed", [0, 3])
def test_stratified_order_prefixes_are_proportional(counts, seed):
    labels = np.repeat(np.arange(len(counts)), counts)  # sorted by class, as on disk
    order = subsets.stratified_order(labels, seed)
    assert sorted(order) == list(range(len(labels)))
    sizes = np.array(counts)
    for n in range(1, len(labels) + 1):
        got = np.bincount(labels[order[:n]], minlength=len(counts))
        # one fraction t of every class: got_c - 1 < t * n_c < got_c + 1
        assert np.max((got - 1) / sizes) < np.min((got + 1) / sizes), (n, got)
        if len(set(counts)) == 1:  # balanced: round robin
            assert got.max() - got.min() <= 1


def test_stratified_order_is_seeded():
    labels = np.repeat(np.arange(4), 25)
    np.testing.assert_array_equal(subsets.stratified_order(labels, 1), subsets.stratified_order(labels, 1))
    assert not np.array_equal(subsets.stratified_order(labels, 1), subsets.stratified_order(labels, 2))
    assert subsets.stratified_order([], 0).size == 0
    assert subsets.classes_covered([[3, 1], [1, 7]]) == 3


# ---------------------------------------------------------------------------- datasets
def test_mnist5k_first_digits_of_both_splits_span_the_classes():
    for split in ("train", "test"):
        first = _labels(get_dataset("mnist5k", split, 10, shuffle=False, augment=False, limit=20)[0])
        assert np.bincount(first, minlength=10).tolist() == [2] * 10, (split, first)
    # the unshuffled train split is a reordering of the same digits, fixed from call to call
    full = [_labels(get_dataset("mnist5k", "train", 500, shuffle=False, augment=False)[0]) for _ in range(2)]
    np.testing.assert_array_equal(full[0], full[1])
    assert np.bincount(full[0]).tolist() == [400] * 10


@pytest.fixture
def sorted_folder(tmp_path):
    """A class-per-folder dataset with train/ and test/, 3 classes of 8 + 8 + 4 test images."""
    for split, counts in (("train", (6, 6, 6)), ("test", (8, 8, 4))):
        for label, count in enumerate(counts):
            directory = tmp_path / split / f"class_{label}"
            directory.mkdir(parents=True)
            for i in range(count):
                image = np.full((8, 8, 3), 20 * label + i, np.uint8)
                (directory / f"{i:02d}.png").write_bytes(tf.io.encode_png(image).numpy())
    folder.scan.cache_clear()
    return f"folder:{tmp_path}"


def test_folder_limit_takes_a_class_stratified_sample(sorted_folder):
    first = _labels(get_dataset(sorted_folder, "test", 4, image_size=8, limit=5)[0])
    assert subsets.classes_covered(first) == 3, first  # sorted on disk: the first 5 files are all class 0
    again = _labels(get_dataset(sorted_folder, "test", 4, image_size=8, limit=5)[0])
    np.testing.assert_array_equal(first, again)
    whole = _labels(get_dataset(sorted_folder, "test", 4, image_size=8)[0])
    assert np.bincount(whole).tolist() == [8, 8, 4]  # the whole split is still served, reordered
    np.testing.assert_array_equal(whole[:5], first)


def test_calibration_batches_are_seeded_random_samples(sorted_folder):
    a = calibration_batches(sorted_folder, 6, 4, seed=0, labels=True, image_size=8)
    b = calibration_batches(sorted_folder, 6, 4, seed=0, labels=True, image_size=8)
    c = calibration_batches(sorted_folder, 6, 4, seed=1, labels=True, image_size=8)
    assert [len(x) for x, _ in a] == [4, 2] and all(x.shape[1:] == (8, 8, 3) for x, _ in a)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in a]), np.concatenate([x for x, _ in b]))
    assert not np.array_equal(np.concatenate([x for x, _ in a]), np.concatenate([x for x, _ in c]))
    assert subsets.classes_covered([y for _, y in a]) >= 2
    plain = calibration_batches(sorted_folder, 6, 4, seed=0, image_size=8)  # x batches only
    np.testing.assert_array_equal(np.concatenate(plain), np.concatenate([x for x, _ in a]))
    digits = calibration_batches("mnist5k", 128, 64, seed=0, labels=True)
    assert subsets.classes_covered([y for _, y in digits]) == 10


# ---------------------------------------------------------------------------- reports
@pytest.fixture(scope="module")
def mnist_qat_checkpoint(tmp_path_factory):
    """A tiny 8-bit QAT classifier of mnist5k's shape (32x32x3 -> 10), saved as .keras."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 4, strides=4, activation="relu")(inputs)  # 'valid': deployable exactly
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x))
    qat = quantize_model(keras.Model(inputs, keras.layers.Dense(10)(x)), 8, 8)
    qat(np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32"), training=True)
    path = str(tmp_path_factory.mktemp("qat") / "qat_model.keras")
    qat.save(path)
    return path


def test_export_report_and_stage_lines_state_the_classes(mnist_qat_checkpoint, tmp_path, capsys):
    out = tmp_path / "export"
    code = export.main(["--checkpoint", mnist_qat_checkpoint, "--output", str(out), "--format", "tflite",
                        "--num_eval", "20", "--num_calib", "16"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    report = json.loads((out / "model_int8_fidelity.json").read_text())
    assert (report["num_images"], report["classes_covered"], report["num_classes"]) == (20, 10, 10)
    assert "| classes_covered | 10 |" in (out / "model_int8_fidelity.md").read_text()
    assert "num_images=20, classes_covered=10" in captured.out
    stages = [line for line in captured.err.splitlines() if line.startswith("export.py: ")]
    for needle in ("loading", "calibration 16 train images (seeded random sample), ",
                   "fidelity 20 test images (class-stratified), 10 classes", "converting to integer TFLite",
                   "fidelity: 20 images"):
        assert any(needle in line for line in stages), (needle, stages)


def test_ptq_results_state_the_classes(tmp_path, capsys):
    fp = str(tmp_path / "fp.keras")
    residual_model((32, 32, 3), 10, stem_stride=4).save(fp)
    code, err = run_ptq(capsys, "--model=resnet18", "--method=rtn", "--calib_size=24", "--batch_size=8",
                        f"--fp_checkpoint={fp}", f"--output_dir={tmp_path / 'out'}")
    assert code == 0, err[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (results["eval_images"], results["classes_covered"], results["num_classes"]) == (1000, 10, 10)
    assert results["calib_classes_covered"] >= 8 and results["calib_size"] == 24
    stages = [line for line in err.splitlines() if line.startswith("ptq.py: ")]
    for needle in ("output directory", "loading the FP model", "24 calibration images", "evaluating"):
        assert any(needle in line for line in stages), (needle, stages)


def test_export_api_counts_the_classes_of_its_eval_data(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs))
    qat = quantize_model(keras.Model(inputs, keras.layers.Dense(5)(x)), 8, 8)
    images = np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype("float32")
    qat(images, training=True)
    import repq

    steps = []
    _, report = repq.export_tflite(qat, str(tmp_path / "m.tflite"), [images], [(images, np.array([0, 0, 1, 1, 3, 3]))],
                                   log=steps.append)
    assert (report["classes_covered"], report["num_classes"]) == (3, 5)
    assert len(steps) == 2 and os.path.isfile(tmp_path / "m_fidelity.md")
