"""benchmarks/repq_bn_fold.py: the per-layer record of folded kernels, checked on one layer by hand."""

import numpy as np
import pytest

from benchmarks import repq_bn_fold


def test_records_each_folded_layer_in_both_modes_and_restores_the_calls():
    import keras

    from repq import models
    from repq.qat import calibrate, quantize_model
    from repq.qat.transform import quantized_layers
    from tests.conftest import randomize_norms

    keras.utils.set_random_seed(0)
    fp = models.create_model("ac_resnet18", num_classes=10, input_shape=(32, 32, 3), stem="imagenet")
    randomize_norms(fp)
    rng = np.random.default_rng(0)
    calibration, images = (rng.normal(size=(8, 32, 32, 3)).astype("float32") for _ in range(2))
    labels = rng.integers(0, 10, 8)
    run = repq_bn_fold.measure(fp, None, 4, 4, calibration, images, labels, seed=0)
    assert (run["weight_bits"], run["act_bits"]) == (4, 4) and 0 <= run["top1_training"] <= 100
    names = [r["layer"] for r in run["layers"]]
    assert names[0] == "stem" and "stage4_block1_conv2" in names
    # the stem reads the image itself: its folded kernels, computed here independently, in both modes
    keras.utils.set_random_seed(0)
    qat = calibrate(quantize_model(fp, 4, 4, bn="repq"), calibration)
    stem = next(w for w in quantized_layers(qat) if w.name == "stem")
    with repq_bn_fold.recording([stem]) as seen:
        qat(images, training=False)
    assert list(seen) == ["stem"] and "call" not in vars(stem)  # recorded, then the class's call again
    expected = {training: float(np.abs(np.asarray(stem.float_kernel_and_bias(
        stem.quantize_input(images, training), training)[0])).max()) for training in (False, True)}
    row = run["layers"][0]
    assert row["kernel_max_inference"] == pytest.approx(expected[False], rel=1e-6)
    assert row["kernel_max_training"] == pytest.approx(expected[True], rel=1e-6)
    assert row["kernel_ratio"] == pytest.approx(expected[True] / expected[False], rel=1e-6)


def test_bad_bits_and_missing_checkpoint_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        repq_bn_fold.parse_args(["--fp_checkpoint", str(tmp_path / "none.keras")])
    assert "does not exist" in capsys.readouterr().err
    fp = tmp_path / "fp.keras"
    fp.write_bytes(b"x")
    with pytest.raises(SystemExit):
        repq_bn_fold.parse_args(["--fp_checkpoint", str(fp), "--bits", "4x4"])
    assert "weight/activation pairs" in capsys.readouterr().err
    args = repq_bn_fold.parse_args(["--fp_checkpoint", str(fp), "--bits", "2/4"])
    assert args.bits == [(2, 4)] and not args.bn_variance_floor
    assert repq_bn_fold.parse_args(["--fp_checkpoint", str(fp), "--bn_variance_floor"]).bn_variance_floor
