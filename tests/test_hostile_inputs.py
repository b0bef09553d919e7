"""Hostile and wrong input: one clear one-line error, nothing already written is lost.

train.py, ptq.py and export.py are driven in-process (``train.cli`` with parsed absl flags,
``ptq.cli``, ``export.main``: no TF import per case).
"""

import errno
import json
import os
import warnings

import keras
import numpy as np
import pytest
from absl import flags

from repq.cli import export
from repq import models
from repq.cli import train
from repq.callbacks import NaNGuard, NonFiniteError
from repq.export import api as export_api
from repq.layers import RepVGGBlock
from repq.outputs import MARKER, write_marker
from repq.ptq import quantize_ptq
from repq.qat import calibrate, quantize_model
from repq.reparam import reparametrize
from repq.training import CheckpointError, load_model, save_model, write_json, write_text
from repq.training import artifacts
from tests.test_ptq_resume import ptq_args, residual_model, run_ptq


def run_train(capsys, *args):
    """-> (exit code, stderr) of ``train.py ARGS`` run in this process."""
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train.py", *args])
    code = 0
    try:
        train.cli(["train.py"])
    except SystemExit as err:
        code = err.code
    finally:
        flags.FLAGS.unparse_flags()
    return code, capsys.readouterr().err


def assert_one_line_error(err, *needles):
    lines = [line for line in err.strip().splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args, message", [
    (["--model=repvgg_z9"], "unknown model 'repvgg_z9'"),
    (["--method=int4"], "unknown method 'int4'"),
    (["--bits=1"], "--weight_bits=1: bit width"),
    (["--strategy=horovod"], "unknown strategy 'horovod'"),
    (["--epochs=-1"], "--epochs=-1 must be >= 0"),
    (["--freeze_bn_after=soon"], "--freeze_bn_after=soon: give a number of QAT epochs >= 0, or 'never'"),
    (["--freeze_bn_after=-1"], "--freeze_bn_after=-1: give a number of QAT epochs >= 0, or 'never'"),
    (["--method=merged_lsq", "--bn_variance_floor"], "--bn_variance_floor changes how RepQ-BN folds its branch"),
    (["--bnest", "--bn_variance_floor"], "use it with --method=repq on a model with BatchNorm, without --bnest"),
    (["--bnest_padding_aware"], "--bnest_padding_aware changes how BN estimation estimates: use it with --bnest"),
    (["--strategy=multi_worker"], "needs TF_CONFIG"),
    (["--dataset=nope"], "Unknown dataset 'nope'"),
    (["--act_bits=1"], "--act_bits=1: bit width"),
    (["--fp_checkpoint=/nonexistent/fp.keras"], "does not exist"),
    (["--method=tfmot8", "--bits=4"], "tfmot8 is tfmot's 8-bit scheme"),
])
def test_usage_errors(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code, err = run_train(capsys, *args, f"--output_dir={tmp_path / 'out'}")
    assert code == 2
    assert_one_line_error(err, message)


def test_empty_and_missing_dataset_folders(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = run_train(capsys, f"--dataset=folder:{tmp_path / 'empty'}", f"--output_dir={tmp_path / 'o'}")
    assert code == 2
    assert_one_line_error(err, "is empty")
    code, err = run_train(capsys, f"--dataset=folder:{tmp_path / 'missing'}", f"--output_dir={tmp_path / 'o'}")
    assert code == 2
    assert_one_line_error(err, "does not exist")


def test_unwritable_output_dir_fails_before_training(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")  # a directory below a file cannot be created, even by root
    code, err = run_train(capsys, "--model=ecbsr_m4c16", "--limit=2", f"--output_dir={blocker / 'run'}")
    assert code == 2
    assert_one_line_error(err, "is not writable")
    assert blocker.read_text() == "I am a file"


def test_corrupt_fp_checkpoint_is_reported(capsys, tmp_path):
    bad = tmp_path / "fp.keras"
    bad.write_bytes(b"PK\x03\x04" + os.urandom(2000))
    code, err = run_train(capsys, "--model=ecbsr_m4c16", "--limit=2", f"--fp_checkpoint={bad}",
                          f"--output_dir={tmp_path / 'o'}")
    assert code == 2
    assert_one_line_error(err, str(bad), "not a valid .keras file")


def test_fp_checkpoint_of_another_architecture(capsys, tmp_path):
    path = str(tmp_path / "ecbsr.keras")
    models.create_model("ecbsr_m4c16", scale=2).save(path)
    code, err = run_train(capsys, "--model=ecbsr_m4c16_x4", "--limit=2", f"--fp_checkpoint={path}",
                          f"--output_dir={tmp_path / 'o'}")
    assert code == 2
    assert_one_line_error(err, path, "is not a ecbsr_m4c16_x4 model")


@pytest.mark.parametrize("aware", [False, True], ids=["spec_checkpoint", "padding_aware_checkpoint"])
def test_fp_checkpoint_with_another_bnest_estimate_is_refused(capsys, tmp_path, aware):
    path = str(tmp_path / "bnest.keras")
    models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3), norm_mode="bnest",
                        bnest_padding_aware=aware).save(path)
    flag = [] if aware else ["--bnest_padding_aware"]
    code, err = run_train(capsys, "--model=repvgg_a0", "--bnest", *flag, "--limit=2", f"--fp_checkpoint={path}",
                          f"--output_dir={tmp_path / 'o'}")
    assert code == 2
    assert_one_line_error(err, path, f"trained {'with' if aware else 'without'} --bnest_padding_aware")


def test_corrupt_stage_artefact_in_run_dir_is_not_used(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    write_marker(str(out), "train")  # a train.py run directory
    (out / "fp_model.keras").write_bytes(b"garbage")
    args = ["--model=ecbsr_m4c16", "--limit=2", f"--output_dir={out}"]
    code, err = run_train(capsys, *args)
    assert code == 2
    assert_one_line_error(err, str(out / "fp_model.keras"), "delete it to redo that stage")
    assert (out / "fp_model.keras").read_bytes() == b"garbage"  # reported, not overwritten


def test_rerun_with_other_settings_into_the_same_run_dir_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    write_marker(str(out), "train")
    (out / "fp_model.keras").write_bytes(b"garbage")  # a result; stops the first run right after its checks
    run_train(capsys, "--model=ecbsr_m4c16", "--limit=2", f"--output_dir={out}")
    saved = (out / "run_config.json").read_text()
    code, err = run_train(capsys, "--model=ecbsr_m4c16", "--limit=2", "--bits=8", f"--output_dir={out}")
    assert code == 2
    assert_one_line_error(err, "holds a run with other settings (differs in: act_bits, weight_bits) and its "
                               "results (fp_model.keras)")
    assert (out / "run_config.json").read_text() == saved


def test_failed_run_without_results_does_not_block_its_fix(capsys, tmp_path, monkeypatch):
    """A run that failed before producing anything (here: an --fp_checkpoint of another
    architecture) leaves only its settings: the corrected command takes the directory over."""
    import repq.training
    from repq.training import SimulatedCrash

    def stop(*args, **kwargs):
        raise SimulatedCrash("stopped by the test where training would start")
    out = tmp_path / "run"
    wrong = str(tmp_path / "ecbsr_x2.keras")
    models.create_model("ecbsr_m4c16", scale=2).save(wrong)
    code, err = run_train(capsys, "--model=ecbsr_m4c16_x4", "--limit=2", f"--fp_checkpoint={wrong}",
                          f"--output_dir={out}")
    assert code == 2 and "is not a ecbsr_m4c16_x4 model" in err
    assert sorted(os.listdir(out)) == [MARKER, "run_config.json"]
    monkeypatch.setattr(repq.training, "fit_model", stop)  # the fix, stopped where FP training starts
    code, err = run_train(capsys, "--model=ecbsr_m4c16_x4", "--limit=2", f"--output_dir={out}")
    assert code == 1 and "stopped by the test" in err, err[-2000:]
    notes = [line for line in err.splitlines() if "left no results" in line]
    assert len(notes) == 1 and "differs in: fp_checkpoint" in notes[0] and "starting afresh" in notes[0], err[-2000:]
    assert json.loads((out / "run_config.json").read_text())["fp_checkpoint"] is None


def test_disk_full_mid_write_keeps_earlier_outputs_and_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_json(str(target), {"run": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(artifacts.os, "fsync", full)
    with pytest.raises(OSError) as info:
        write_text(str(target), "x" * 10_000)
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == '{\n  "run": 1\n}\n'
    assert os.listdir(tmp_path) == ["results.json"]


def test_disk_full_while_saving_a_model(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = str(tmp_path / "m.keras")
    save_model(model, path)
    before = open(path, "rb").read()

    def full(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", filepath)
    monkeypatch.setattr(keras.Model, "save", full)
    with pytest.raises(OSError):
        save_model(model, path)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["m.keras"]
    load_model(path)  # still valid


def test_truncated_keras_file_one_line_error(tmp_path):
    path = str(tmp_path / "m.keras")
    save_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError) as info:
        load_model(path, hint="delete it")
    assert "\n" not in str(info.value) and path in str(info.value) and "delete it" in str(info.value)


def test_corrupt_image_among_good_ones_is_skipped_with_a_warning(tmp_path):
    import tensorflow as tf

    from repq.data import get_dataset
    from repq.data import folder as folder_module

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            png = tf.io.encode_png(np.full((12, 12, 3), 40 * i, np.uint8)).numpy()
            (tmp_path / cls / f"{i}.png").write_bytes(png)
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image at all")
    folder_module.scan.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds, info = get_dataset(f"folder:{tmp_path}", "train", 4, image_size=8, shuffle=False)
    assert any("broken.png" in str(w.message) for w in caught)
    assert sum(int(x.shape[0]) for x, _ in ds) == info.num_train == 8


def _nan_guard_model():
    """A calibrated W4A4 QAT model of one RepVGG block ("blk") and a dense "head", with its data."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(RepVGGBlock(4, name="blk")(inputs))
    qat = quantize_model(keras.Model(inputs, keras.layers.Dense(2, name="head")(x)), 4, 4)
    data = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    calibrate(qat, data)
    qat.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return qat, data


def test_nan_guard_names_the_layer_and_the_checkpoint():
    qat, data = _nan_guard_model()
    step = next(v for v in qat.variables if v.path.endswith("/step") and "weight" in v.path)
    step.assign(np.full(step.shape, np.nan, np.float32))
    with pytest.raises(NonFiniteError) as info:
        qat.fit(data, np.zeros(8, np.int32), batch_size=4, epochs=2, verbose=0,
                callbacks=[NaNGuard(checkpoint="runs/x/backup/qat/state.json")])
    message = str(info.value)
    # The guard checks the steps before the loss: a NaN step is reported as such whether or not
    # it made the loss NaN (no dependence on how max/clip propagate NaN on this CPU). A NaN step
    # stays NaN after any update (NaN - lr * g), so batch 1 is where it is seen.
    assert "an LSQ step size is NaN/Inf at epoch 1, batch 1: first non-finite variable: blk/" in message
    assert step.path in message
    assert "runs/x/backup/qat/state.json" in message and "\n" not in message


def test_non_finite_step_reads_as_eps_with_defined_semantics():
    """positive_step replaces NaN/Inf by an explicit select (not through max): the forward pass
    is finite, and finite steps keep max(|s|, eps)'s values and gradients exactly."""
    import tensorflow as tf

    from repq.quantizers import STEP_EPS, WeightQuantizer
    q = WeightQuantizer(4)
    q.build((3, 3, 2, 6))
    values = np.array([np.nan, np.inf, -np.inf, -0.3, 1e-12, 0.25], np.float32)
    q.step.assign(values)
    with tf.GradientTape() as tape:
        used = q.positive_step()
        loss = tf.reduce_sum(used * np.arange(1, 7, dtype=np.float32))
    np.testing.assert_array_equal(used.numpy(), np.float32([STEP_EPS, STEP_EPS, STEP_EPS, 0.3, STEP_EPS, 0.25]))
    grad = tape.gradient(loss, q.step).numpy()
    np.testing.assert_array_equal(grad[3:], [-4.0, 0.0, 6.0])  # d max(|s|, eps)/ds: -1, 0 below eps, +1
    x = np.random.default_rng(0).normal(size=(3, 3, 2, 6)).astype(np.float32)
    assert np.isfinite(q(x).numpy()).all()


def test_nan_guard_names_the_non_finite_weight_when_the_loss_is_not_finite():
    """Called as Keras calls it after a batch, so nothing depends on how the forward or backward
    pass propagates NaN/Inf: finite steps and a non-finite loss -> the first non-finite weight."""
    qat, _ = _nan_guard_model()
    guard = NaNGuard(checkpoint=lambda: "runs/x/backup/qat/state.json")
    guard.set_model(qat)
    guard.on_train_begin()
    guard.on_epoch_begin(2)
    with pytest.raises(NonFiniteError, match=r"^loss is nan at epoch 3, batch 5: all variables are finite \(check "):
        guard.on_train_batch_end(4, {"loss": np.float32(np.nan)})
    kernel = next(v for v in qat.trainable_variables if v.path == "blk/kernel_3x3")
    kernel.assign(np.full(kernel.shape, np.inf, np.float32))
    with pytest.raises(NonFiniteError) as info:
        guard.on_train_batch_end(4, {"loss": np.float32(np.inf)})
    assert str(info.value) == ("loss is inf at epoch 3, batch 5: first non-finite variable: blk/kernel_3x3 (layer blk; "
                               "1 in all: blk/kernel_3x3); last good checkpoint: runs/x/backup/qat/state.json")
    step = next(v for v in qat.variables if v.path == "head/input_quantizer/step")
    step.assign(np.inf)
    with pytest.raises(NonFiniteError, match=r"^an LSQ step size is NaN/Inf at epoch 3, batch 5: first non-finite "
                                             r"variable: head/input_quantizer/step \(layer head/input_quantizer; 1 in"):
        guard.on_train_batch_end(4, {"loss": np.float32(0.5)})  # a finite loss does not hide it


def test_nan_guard_stops_fit_on_an_inf_kernel():
    """End to end: an Inf kernel stops training at batch 1 whatever this CPU's NaN semantics
    (x / s = Inf gives the step an Inf/NaN gradient, and the loss is finite or NaN)."""
    qat, data = _nan_guard_model()
    kernel = next(v for v in qat.trainable_variables if v.path == "blk/kernel_3x3")
    kernel.assign(np.full(kernel.shape, np.inf, np.float32))
    with pytest.raises(NonFiniteError, match="at epoch 1, batch 1: first non-finite variable: blk/"):
        qat.fit(data, np.zeros(8, np.int32), batch_size=4, epochs=1, verbose=0, callbacks=[NaNGuard()])


# ---------------------------------------------------------------- ptq.py (driven in-process: ptq.cli)


@pytest.fixture(scope="module")
def ptq_fp_checkpoint(tmp_path_factory):
    """A tiny mnist5k classifier (32x32x3 -> 10 logits, 3 BRECQ units) saved as .keras."""
    path = str(tmp_path_factory.mktemp("ptq_fp") / "tiny.keras")
    residual_model((32, 32, 3), 10, stem_stride=4).save(path)
    return path


def assert_ptq_error(err, *needles):
    lines = [line for line in err.strip().splitlines() if line.startswith("ptq.py: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args, message", [
    (["--model=resnet99"], "unknown model 'resnet99'"),
    (["--method=gptq"], "unknown method 'gptq'"),
    (["--dataset=nope"], "Unknown dataset 'nope'"),
    (["--dataset=skimage_sr"], "is for super_resolution"),
    (["--weight_bits=1"], "--weight_bits=1: bit width"),
    (["--act_bits=9"], "--act_bits=9: bit width"),
    (["--weight_bits=four"], "flag --weight_bits=four"),
    (["--iters=0"], "--iters=0 must be >= 1"),
    (["--calib_size=0"], "--calib_size=0 must be >= 1"),
    (["--fp_checkpoint=/nonexistent/fp.keras"], "does not exist"),
    (["--method=mrecg_modcap", "--scheme=0,(1,"], "cannot parse scheme"),
    (["--method=mrecg_modcap", "--scheme=0,1"], "covers 2 units, the model has 3"),
    (["--topk=1"], "--scheme / --topk apply to the mrecg_* methods"),
    (["stray"], "unexpected arguments: stray"),
])
def test_ptq_usage_errors(capsys, tmp_path, ptq_fp_checkpoint, args, message):
    out = tmp_path / "out"
    code, err = run_ptq(capsys, *ptq_args(ptq_fp_checkpoint, out), *args)
    assert code == 2
    assert_ptq_error(err, message)
    assert not (out / "results.json").exists()


def test_ptq_corrupt_and_mismatched_fp_checkpoints(capsys, tmp_path):
    bad = tmp_path / "fp.keras"
    bad.write_bytes(b"PK\x03\x04" + os.urandom(2000))
    code, err = run_ptq(capsys, *ptq_args(bad, tmp_path / "o1"))
    assert code == 2
    assert_ptq_error(err, str(bad), "not a valid .keras file")
    small = str(tmp_path / "small.keras")
    residual_model((16, 16, 3), 10).save(small)
    code, err = run_ptq(capsys, *ptq_args(small, tmp_path / "o2"))
    assert code == 2
    assert_ptq_error(err, "takes inputs (16, 16, 3), --dataset mnist5k has images (32, 32, 3)")
    five = str(tmp_path / "five.keras")
    residual_model((32, 32, 3), 5, stem_stride=4).save(five)
    code, err = run_ptq(capsys, *ptq_args(five, tmp_path / "o3"))
    assert code == 2
    assert_ptq_error(err, "outputs (5,), --dataset mnist5k needs 10 class logits")


def test_ptq_failed_run_without_results_does_not_block_its_fix(capsys, tmp_path, ptq_fp_checkpoint, monkeypatch):
    """A wrong --fp_checkpoint fails after run_config.json is written; rerunning with the right
    one is accepted (the directory holds no results), with a note saying so."""
    import repq.ptq
    from repq.training import SimulatedCrash

    def stop(*args, **kwargs):
        raise SimulatedCrash("stopped by the test where the reconstruction would start")
    out = tmp_path / "out"
    five = str(tmp_path / "five.keras")
    residual_model((32, 32, 3), 5, stem_stride=4).save(five)
    code, err = run_ptq(capsys, *ptq_args(five, out))
    assert code == 2
    assert_ptq_error(err, "needs 10 class logits")
    assert sorted(os.listdir(out)) == [MARKER, "run_config.json"]
    monkeypatch.setattr(repq.ptq, "quantize_ptq", stop)
    code, err = run_ptq(capsys, *ptq_args(ptq_fp_checkpoint, out))
    assert code == 1 and "stopped by the test" in err, err[-2000:]
    assert "ptq.py: " in err and "(other settings, differs in: fp_checkpoint) left no results" in err
    assert json.loads((out / "run_config.json").read_text())["fp_checkpoint"] == ptq_fp_checkpoint


def test_ptq_unwritable_output_dir(capsys, tmp_path, ptq_fp_checkpoint):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    code, err = run_ptq(capsys, *ptq_args(ptq_fp_checkpoint, blocker / "out"))
    assert code == 2
    assert_ptq_error(err, "is not writable", "pass a writable --output_dir")
    assert blocker.read_text() == "I am a file"


def test_ptq_corrupt_unit_checkpoint_via_cli(capsys, tmp_path, ptq_fp_checkpoint):
    out = tmp_path / "out"
    assert run_ptq(capsys, *ptq_args(ptq_fp_checkpoint, out, "--crash_after_units=1"))[0] == 1
    weights = out / "checkpoints" / "units" / "unit_0001.npz"
    weights.write_bytes(b"garbage")
    code, err = run_ptq(capsys, *ptq_args(ptq_fp_checkpoint, out))
    assert code == 2
    assert_ptq_error(err, str(weights), "is corrupt", "delete")
    assert weights.read_bytes() == b"garbage"


def test_ptq_disk_full_keeps_the_previous_results(capsys, tmp_path, ptq_fp_checkpoint, monkeypatch):
    out = tmp_path / "out"
    assert run_ptq(capsys, *ptq_args(ptq_fp_checkpoint, out))[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(artifacts.os, "fsync", full)
    code, err = run_ptq(capsys, *ptq_args(ptq_fp_checkpoint, out))  # finished run: rewrites its outputs
    assert code == 1
    assert_ptq_error(err, "No space left on device", "files written before are intact")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # no .partial files either


@pytest.mark.parametrize("images, error, message", [
    (np.zeros((8, 8, 8, 4), np.uint8), TypeError, "dtype uint8"),
    (np.zeros((8, 16, 16, 4), np.float32), ValueError, r"shape \(8, 16, 16, 4\), the model takes \(N, 8, 8, 4\)"),
    (np.zeros((8, 8, 4), np.float32), ValueError, "the model takes"),
    (np.full((8, 8, 8, 4), np.nan, np.float32), ValueError, "NaN or Inf"),
])
def test_ptq_driver_rejects_bad_calibration_images(images, error, message):
    with pytest.raises(error, match=message):
        quantize_ptq(residual_model(), images, "rtn", verbose=0)


# ---------------------------------------------------------------- export.py (in-process: export.main)


@pytest.fixture(scope="module")
def sr_checkpoint(tmp_path_factory):
    """A tiny QAT ECBSR x2 (steps initialised on one skimage_sr batch) saved as .keras."""
    from repq.data import get_dataset

    keras.utils.set_random_seed(0)
    qat = quantize_model(models.create_model("ecbsr_m4c16_x2"), 4, 4)
    train, _ = get_dataset("skimage_sr", "train", 4, limit=4, patch_size=16)
    qat(next(iter(train))[0], training=True)
    path = str(tmp_path_factory.mktemp("export") / "qat_model.keras")
    qat.save(path)
    return path


def run_export(capsys, *args):
    """-> (exit code, stderr) of ``export.py ARGS`` run in this process."""
    code = export.main(list(args))
    return code, capsys.readouterr().err


def assert_export_error(err, *needles):
    lines = [line for line in err.strip().splitlines() if line.startswith("export.py: error:")]
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_export_usage_and_input_errors(capsys, tmp_path, sr_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    write_marker(str(out), "export")  # an earlier export
    (out / "model_int8.tflite").write_bytes(b"previous export")
    common = ["--output", str(out), "--overwrite", "--num_eval", "2", "--num_calib", "4"]
    cases = [
        (["--checkpoint", sr_checkpoint, "--output", str(out), "--format", "onnx"], 2, "invalid choice: 'onnx'"),
        (["--output", str(out)], 2, "the following arguments are required: --checkpoint"),
        (["--checkpoint", sr_checkpoint, "--output", str(out), "--num_eval", "0"], 2, "--num_eval=0 must be >= 1"),
        (["--checkpoint", sr_checkpoint, *common, "--dataset", "nope"], 1, "Unknown dataset 'nope'"),
        (["--checkpoint", sr_checkpoint, *common, "--dataset", "mnist5k"], 1, "does not fit the checkpoint"),
        (["--checkpoint", sr_checkpoint, *common, "--scale", "4"], 1, "the checkpoint upscales by 2"),
        (["--checkpoint", str(tmp_path / "missing.keras"), *common], 1, "does not exist"),
        (["--checkpoint", str(tmp_path), *common], 1, "run train.py or ptq.py first"),
    ]
    for args, code, message in cases:
        got, err = run_export(capsys, *args)
        assert got == code, (args, err)
        assert_export_error(err, message)
    (tmp_path / "bad.keras").write_bytes(b"PK\x03\x04" + os.urandom(500))
    got, err = run_export(capsys, "--checkpoint", str(tmp_path / "bad.keras"), *common)
    assert got == 1
    assert_export_error(err, "bad.keras is not a valid .keras file (truncated, corrupt")
    float_model = str(tmp_path / "float.keras")
    models.create_model("ecbsr_m4c16_x2").save(float_model)
    got, err = run_export(capsys, "--checkpoint", float_model, *common, "--format", "tflite")
    assert got == 1
    assert_export_error(err, "has no quantizers")
    assert sorted(os.listdir(out)) == [MARKER, "model_int8.tflite"]
    assert (out / "model_int8.tflite").read_bytes() == b"previous export"
    assert sorted(os.listdir(tmp_path)) == ["bad.keras", "float.keras", "out"]  # no temporary folders left


def test_export_unwritable_output(capsys, tmp_path, sr_checkpoint):
    blocker = tmp_path / "file"
    blocker.write_text("I am a file")
    code, err = run_export(capsys, "--checkpoint", sr_checkpoint, "--output", str(blocker / "out"))
    assert code == 2
    assert_export_error(err, "is not writable", "pass a writable --output")
    assert blocker.read_text() == "I am a file"


def test_export_disk_full_mid_export_keeps_the_existing_export(capsys, tmp_path, sr_checkpoint, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    write_marker(str(out), "export")  # an earlier export
    (out / "saved_model").mkdir()
    (out / "saved_model" / "saved_model.pb").write_bytes(b"previous export")

    def full(model, path, *args, **kwargs):  # the SavedModel writer runs out of space half-way
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", path)
    monkeypatch.setattr(export_api, "export_savedmodel", full)
    code, err = run_export(capsys, "--checkpoint", sr_checkpoint, "--output", str(out), "--overwrite",
                           "--format", "savedmodel", "--num_eval", "2", "--num_calib", "4")
    assert code == 1
    assert_export_error(err, "No space left on device", "an existing --output is intact")
    assert (out / "saved_model" / "saved_model.pb").read_bytes() == b"previous export"
    assert sorted(os.listdir(tmp_path)) == ["out"] and sorted(os.listdir(out)) == [MARKER, "saved_model"]


# ------------------------------------------------- issue 17, item 4: traps, tracebacks, misleading messages


def run_train_argv(capsys, *args):
    """-> (exit code, stderr) of ``train.py ARGS``, flags parsed by train.parse_flags (app.run's parser)."""
    flags.FLAGS.unparse_flags()
    code = 0
    try:
        train.cli(train.parse_flags(["train.py", *args]))
    except SystemExit as err:
        code = err.code
    finally:
        flags.FLAGS.unparse_flags()
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--config=configs/repvgg_a0.py:nope"], "unknown recipe variant 'nope'"),
    (["--config=configs/repvgg_a0.py", "--config.lr.nope=1"], "unknown flag --config.lr.nope"),
    (["--bits=four"], "flag --bits=four"),
    (["--nope"], "unknown flag --nope; train.py --help"),
])
def test_absl_flag_errors_are_usage_errors(capsys, args, message):
    code, err = run_train_argv(capsys, *args)
    assert code == 2 and "FATAL" not in err
    assert_one_line_error(err, message)


def test_train_py_flag_errors_in_a_real_process_exit_2():
    """app.run(cli, flags_parser=parse_flags): the path a user takes (config overrides resolve there)."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "train.py", "--config=configs/repvgg_a0.py", "--config.lr.nope=1"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert_one_line_error(done.stderr, "--config.lr.nope")
    assert "FATAL" not in done.stderr


def test_ptq_absl_unknown_flag(capsys, tmp_path, ptq_fp_checkpoint):
    code, err = run_ptq(capsys, *ptq_args(ptq_fp_checkpoint, tmp_path / "o"), "--nope")
    assert code == 2
    assert_ptq_error(err, "unknown flag --nope")


def test_one_class_folder_dataset_is_refused(capsys, tmp_path):
    import tensorflow as tf

    (tmp_path / "data" / "only").mkdir(parents=True)
    for i in range(4):
        png = tf.io.encode_png(np.full((8, 8, 3), 30 * i, np.uint8)).numpy()
        (tmp_path / "data" / "only" / f"{i}.png").write_bytes(png)
    code, err = run_train(capsys, f"--dataset=folder:{tmp_path / 'data'}", f"--output_dir={tmp_path / 'o'}")
    assert code == 2
    assert_one_line_error(err, "only one class ('only')", "at least 2 class subfolders")
    assert not (tmp_path / "o" / "results.json").exists()


def _ptq_args_without_checkpoint(output_dir):
    return [a for a in ptq_args("unused", output_dir) if not a.startswith("--fp_checkpoint")]


def test_ptq_sigterm_during_fp_baseline_training_says_what_was_lost(capsys, tmp_path, monkeypatch):
    import signal

    from repq.ptq import fp_baseline

    def train_fp_model(*args, callbacks=None, **kwargs):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile("sgd", "mse")

        class Term(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if batch == 0:
                    os.kill(os.getpid(), signal.SIGTERM)

        model.fit(np.zeros((8, 4)), np.zeros((8, 2)), batch_size=4, epochs=2, verbose=0,
                  callbacks=[*callbacks, Term()])
        raise AssertionError("training went on after SIGTERM")

    monkeypatch.setattr(fp_baseline, "train_fp_model", train_fp_model)
    code, err = run_ptq(capsys, *_ptq_args_without_checkpoint(tmp_path / "o"))
    assert code == 128 + signal.SIGTERM
    assert_ptq_error(err, "interrupted (received SIGTERM)", "FP-baseline training was stopped and not kept",
                     "--fp_checkpoint")
    assert not (tmp_path / "o" / "fp_model.keras").exists()


def test_ptq_ctrl_c_during_fp_baseline_training_is_one_line(capsys, tmp_path, monkeypatch):
    from repq.ptq import fp_baseline

    def train_fp_model(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fp_baseline, "train_fp_model", train_fp_model)
    code, err = run_ptq(capsys, *_ptq_args_without_checkpoint(tmp_path / "o"))
    assert code == 130
    assert_ptq_error(err, "interrupted (received SIGINT)", "not kept")


def test_ptq_refuses_a_qat_model_as_fp_checkpoint(capsys, tmp_path):
    qat = quantize_model(residual_model((32, 32, 3), 10, stem_stride=4), 4, 4)
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    code, err = run_ptq(capsys, *ptq_args(path, tmp_path / "o"))
    assert code == 2
    assert_ptq_error(err, "is a QAT model", "pass train.py's fp_model.keras")


def test_empty_keras_file_is_called_empty_not_missing(capsys, tmp_path, sr_checkpoint):
    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_model(str(empty))
    code, err = run_export(capsys, f"--checkpoint={empty}", f"--output={tmp_path / 'e'}")
    assert code == 1  # export.py: 2 for a bad command line, 1 for a bad input file
    assert_export_error(err, "is empty (0 bytes, not a .keras archive)")
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(os.urandom(1000))
    code, err = run_export(capsys, f"--checkpoint={garbage}", f"--output={tmp_path / 'e'}")
    assert code == 1
    assert_export_error(err, "is not a valid .keras file (truncated, corrupt or another format")
    assert "File not found" not in err


def test_api_rejects_non_models_in_keras_form():
    with pytest.raises(TypeError, match=r"Invalid value for argument model\. Expected a built keras\.Model\. "
                                        r"Received: model='x'"):
        quantize_model("x")
    with pytest.raises(ValueError, match=r"Expected a built keras\.Model\. Received: model=<unbuilt Sequential"):
        quantize_model(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(TypeError, match="Expected a built keras.Model"):
        quantize_ptq(None, [np.zeros((1, 4))], "rtn")


def test_quantizing_a_qat_model_says_it_is_already_quantized():
    qat = quantize_model(residual_model((32, 32, 3), 10, stem_stride=4), 4, 4)
    with pytest.raises(ValueError, match="is already quantized"):
        quantize_model(qat)
    with pytest.raises(ValueError, match="is already quantized.*floating-point model"):
        quantize_ptq(qat, [np.zeros((1, 32, 32, 3), np.float32)], "rtn")


@pytest.mark.parametrize("suffix, content, message", [
    (".safetensors", b"", "is empty (0 bytes)"),
    (".safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "is not a valid .safetensors file"),
    (".npz", b"", "is empty (0 bytes)"),
    (".npz", b"PK\x03\x04" + b"\x00" * 64, "is not a valid .npz archive"),
    (".npz", "pickled", "holds pickled objects, not plain arrays"),
    (".pth", b"", "is empty (0 bytes)"),
    (".pth", b"\x80\x02random bytes, not a torch file" * 10, "is not a PyTorch state_dict checkpoint"),
])
def test_convert_reports_unreadable_checkpoints_in_one_line(tmp_path, suffix, content, message):
    from repq.convert import read_state_dict

    pytest.importorskip({".pth": "torch", ".safetensors": "safetensors"}.get(suffix, "numpy"))
    path = tmp_path / f"ckpt{suffix}"
    if content == "pickled":
        np.savez(path, x=np.array([{"a": 1}], dtype=object))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        read_state_dict(path)
    text = str(info.value)
    assert message in text and "\n" not in text and len(text) < 400, text
    assert "weights_only=False" not in text


def test_wrong_architecture_state_dict_message_is_capped_and_names_the_layout():
    from repq.convert import load_torch_state_dict

    model = models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3))
    state = {f"layer{i}.conv.weight": np.zeros((2, 2, 3, 3), np.float32) for i in range(300)}
    with pytest.raises(ValueError) as info:
        load_torch_state_dict(model, state)
    text = str(info.value)
    assert "300 unknown keys: layer0.conv.weight" in text and "(295 more)" in text
    assert "missing keys" in text and "more)" in text
    assert "small-image stride layout" in text and "--input_size 224" in text
    assert len(text) < 1200 and "\n" not in text, len(text)


@pytest.mark.parametrize("call", [
    lambda m, tmp: export_api.export_tflite(m, str(tmp / "m.tflite")),
    lambda m, tmp: export_api.export_savedmodel(m, str(tmp / "saved")),
    lambda m, tmp: export_api.integer_predict(m, np.zeros((1, 4), np.float32)),
    lambda m, tmp: calibrate(m, np.zeros((1, 4), np.float32)),
    lambda m, tmp: reparametrize(m),
], ids=["export_tflite", "export_savedmodel", "integer_predict", "calibrate", "reparametrize"])
def test_public_api_rejects_non_models_in_keras_form(tmp_path, call):
    with pytest.raises(TypeError, match=r"Expected a built keras\.Model\. Received: model='x'"):
        call("x", tmp_path)
    with pytest.raises(ValueError, match=r"Expected a built keras\.Model\. Received: model=<unbuilt Sequential"):
        call(keras.Sequential([keras.layers.Dense(2)]), tmp_path)
    assert os.listdir(tmp_path) == []
