"""Resumable PTQ: crash / signal after unit k and rerun -> the same weights and metrics as one run.

The library (``quantize_ptq(checkpoint_dir=...)``) on an 8x8 residual model and ptq.py driven
in-process (``ptq.cli``) on a tiny mnist5k classifier; tiny shapes, a few steps per unit.
"""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from repq.cli import ptq
from repq.ptq.checkpoint import RunCheckpoint
from repq.ptq.driver import quantize_ptq
from repq.training import CheckpointError, SimulatedCrash, TrainingInterrupted
from repq.training.artifacts import load_arrays

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def residual_model(input_shape=(8, 8, 4), classes=3, stem_stride=1, blocks=1):
    """stem conv -> ``blocks`` residual blocks (2 convs + Add + ReLU each) -> GAP -> Dense:
    ``blocks + 2`` BRECQ units, ``2 * blocks + 2`` layer units."""
    keras.utils.set_random_seed(0)
    x = keras.Input(input_shape)
    s = keras.layers.Conv2D(8, 3, strides=stem_stride, padding="same", activation="relu", name="stem")(x)
    for block in range(blocks):
        name = "b" if block == 0 else f"b{block}"
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"{name}_conv1")(s)
        y = keras.layers.Conv2D(8, 3, padding="same", name=f"{name}_conv2")(y)
        s = keras.layers.ReLU(name=f"{name}_relu")(keras.layers.Add(name=f"{name}_add")([y, s]))
    y = keras.layers.GlobalAveragePooling2D(name="gap")(s)
    return keras.Model(x, keras.layers.Dense(classes, name="fc")(y), name="res")


def merge_first_candidate(scores, k, allowed):
    """An MRECG selection rule for tests: merge the first boundary that may merge, whatever the losses."""
    return [allowed.index(True)]


CALIB = np.random.default_rng(3).normal(size=(16, 8, 8, 4)).astype(np.float32)


def _ptq(method, checkpoint_dir=None, crash_after_units=None):
    """mrecg_loss runs on two residual blocks (the only boundary it may merge: between them) and merges it."""
    blocks, selection = (2, merge_first_candidate) if method == "mrecg_loss" else (1, None)
    return quantize_ptq(residual_model(blocks=blocks), CALIB, method, 3, 4, iters=6, batch_size=8, topk=1, seed=1,
                        selection=selection, verbose=0, checkpoint_dir=checkpoint_dir,
                        crash_after_units=crash_after_units)


def _assert_same(a, b):
    (qa, ra), (qb, rb) = a, b
    for wa, wb in zip(qa.get_weights(), qb.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert ra["unit_losses"] == rb["unit_losses"] and ra["scheme"] == rb["scheme"]
    assert ra["baseline_unit_losses"] == rb["baseline_unit_losses"]


@pytest.mark.parametrize("method, crash", [("qdrop", 1), ("adaround", 2), ("mrecg_loss", 2), ("mrecg_loss", 4)])
def test_crash_after_unit_k_and_resume_equals_uninterrupted(tmp_path, method, crash):
    """mrecg_loss: 4 units of the QDrop search pass, then 3 (two merged); crash 2 is mid-search, crash 4
    right after it (the activation quantizers that the search pass drew QDrop masks from are reused)."""
    reference = _ptq(method)  # no checkpoints at all: checkpointing must not change the result
    assert method != "mrecg_loss" or reference[1]["scheme"] == [0, (1, 2), 3]
    with pytest.raises(SimulatedCrash, match=f"after {crash} reconstruction units"):
        _ptq(method, tmp_path, crash_after_units=crash)
    resumed = _ptq(method, tmp_path)
    assert resumed[1]["resumed_units"] == crash
    _assert_same(reference, resumed)
    again = _ptq(method, tmp_path)  # a finished run reloads its last checkpoint
    assert again[1]["resumed_units"] == len(reference[1]["units"]) + len(reference[1]["baseline_unit_losses"] or [])
    _assert_same(reference, again)


def test_signal_stops_after_the_current_step_and_resumes(tmp_path, monkeypatch):
    reference = _ptq("qdrop")
    original = RunCheckpoint.unit_finished

    def signal_after_first_unit(self):
        if self.units_done == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while the run's handler is installed
        original(self)
    monkeypatch.setattr(RunCheckpoint, "unit_finished", signal_after_first_unit)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        _ptq("qdrop", tmp_path)
    assert info.value.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is previous
    monkeypatch.undo()
    resumed = _ptq("qdrop", tmp_path)
    assert resumed[1]["resumed_units"] == 1
    _assert_same(reference, resumed)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "state", "calibrated", "missing"])
def test_corrupt_unit_checkpoint_is_reported_not_used(tmp_path, damage):
    with pytest.raises(SimulatedCrash):
        _ptq("brecq", tmp_path, crash_after_units=1)
    folder = tmp_path / "units"
    weights = folder / json.loads((folder / "state.json").read_text())["weights"]
    target = {"state": folder / "state.json", "calibrated": tmp_path / "calibrated.npz"}.get(damage, weights)
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:300])
    elif damage == "missing":
        weights.unlink()
    elif damage == "state":
        target.write_text('{"done": ')
    else:
        target.write_bytes(os.urandom(2048))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(CheckpointError) as info:
        _ptq("brecq", tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(target) in message and f"delete {tmp_path}" in message
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # reported, never overwritten


def test_checkpoint_of_another_model_is_refused(tmp_path):
    with pytest.raises(SimulatedCrash):
        _ptq("adaround", tmp_path, crash_after_units=1)  # 4 layer units
    with pytest.raises(CheckpointError, match="written for other reconstruction units"):
        _ptq("brecq", tmp_path)  # 3 block units
    with pytest.raises(CheckpointError, match="holds weights of another model"):
        quantize_ptq(residual_model(classes=5), CALIB, "rtn", 3, 4, verbose=0, checkpoint_dir=str(tmp_path))


# ---------------------------------------------------------------- ptq.py


@pytest.fixture(scope="module")
def fp_checkpoint(tmp_path_factory):
    """A tiny mnist5k classifier (32x32x3 -> 10 logits) saved as .keras."""
    path = str(tmp_path_factory.mktemp("fp") / "tiny.keras")
    residual_model((32, 32, 3), 10, stem_stride=4).save(path)
    return path


def run_ptq(capsys, *args):
    """-> (exit code, stderr) of ``ptq.py ARGS`` run in this process."""
    code = 0
    try:
        ptq.cli(["ptq.py", *args])
    except SystemExit as err:
        code = err.code
    return code, capsys.readouterr().err


def ptq_args(fp_checkpoint, output_dir, *extra):
    return ["--model=resnet18", "--method=qdrop", "--weight_bits=3", "--act_bits=4", "--calib_size=16",
            "--batch_size=8", "--iters=4", f"--fp_checkpoint={fp_checkpoint}", f"--output_dir={output_dir}", *extra]


def _outputs(output_dir):
    """``(results.json, unit_losses.json, final weights)`` of a finished run: the weights of its final
    pass ("units"; "search" when MRECG-loss kept its search pass as the final one)."""
    results = json.loads((output_dir / "results.json").read_text())
    losses = json.loads((output_dir / "unit_losses.json").read_text())
    final = output_dir / "checkpoints" / ("search" if results.get("search_pass_kept") else "units")
    state = json.loads((final / "state.json").read_text())
    weights = load_arrays(str(final / state["weights"]))
    return results, losses, weights


def test_cli_crash_and_rerun_gives_the_same_results(capsys, tmp_path, fp_checkpoint):
    code, err = run_ptq(capsys, *ptq_args(fp_checkpoint, tmp_path / "ref"))
    assert code == 0, err[-2000:]
    run = tmp_path / "run"
    code, err = run_ptq(capsys, *ptq_args(fp_checkpoint, run, "--crash_after_units=2"))
    assert code == 1 and "simulated crash after 2 reconstruction units" in err and "Traceback" not in err
    assert not (run / "results.json").exists()
    code, err = run_ptq(capsys, *ptq_args(fp_checkpoint, run))
    assert code == 0, err[-2000:]
    (ref_results, ref_losses, ref_weights), (results, losses, weights) = _outputs(tmp_path / "ref"), _outputs(run)
    assert results["resumed_units"] == 2 and ref_results["resumed_units"] == 0
    assert results["ptq_top1"] == ref_results["ptq_top1"] and results["fp_top1"] == ref_results["fp_top1"]
    assert losses == ref_losses
    assert len(losses["unit_loss_curves"]) == len(losses["units"]) and losses["unit_loss_curves"][0]["step"] == [1, 2, 3, 4]
    for a, b in zip(ref_weights, weights):
        np.testing.assert_array_equal(a, b)


def test_cli_rerun_with_other_settings_is_refused(capsys, tmp_path, fp_checkpoint):
    out = tmp_path / "run"
    code, _ = run_ptq(capsys, *ptq_args(fp_checkpoint, out, "--crash_after_units=1"))
    assert code == 1
    saved = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, err = run_ptq(capsys, *ptq_args(fp_checkpoint, out, "--iters=5", "--seed=2"))
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (f"ptq.py: error: {out} holds a run with other settings (differs in: iters, seed) and its "
                           "results (checkpoints); use another --output_dir, or delete that one.")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == saved


@pytest.mark.slow
def test_cli_sigterm_then_rerun_resumes(tmp_path, fp_checkpoint):
    """A real ptq.py process: SIGTERM once unit 1 is checkpointed -> exit 143, one line; rerun finishes."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    args = [sys.executable, os.path.join(ROOT, "ptq.py"), *ptq_args(fp_checkpoint, tmp_path, "--iters=300")]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "units" / "state.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "ptq.py: error: interrupted (received SIGTERM)" in err and "Traceback" not in err
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["resumed_units"] >= 1


@pytest.fixture(scope="module")
def qdrop_run(tmp_path_factory, fp_checkpoint):
    """A finished ptq.py QDrop run (``ptq_args``' settings), shared by the --baseline_run tests."""
    out = tmp_path_factory.mktemp("qdrop") / "run"
    try:
        ptq.cli(["ptq.py", *ptq_args(fp_checkpoint, out)])
    except SystemExit as err:
        assert err.code in (0, None), err.code
    return out


def test_mrecg_loss_search_is_the_qdrop_run_and_can_reuse_it(capsys, tmp_path, fp_checkpoint, qdrop_run):
    """MRECG-loss's search pass equals a QDrop run with the same settings (same per-unit losses), so
    ``--baseline_run`` of that run gives the same MRECG result without repeating the pass (also when it
    names the FP checkpoint by another path to the same file)."""
    runs = {"qdrop": _outputs(qdrop_run)}
    linked = tmp_path / "linked.keras"
    linked.symlink_to(fp_checkpoint)
    for name, checkpoint, extra in (("mrecg", fp_checkpoint, ["--method=mrecg_loss"]),
                                    ("reuse", linked, ["--method=mrecg_loss", f"--baseline_run={qdrop_run}"])):
        code, err = run_ptq(capsys, *ptq_args(checkpoint, tmp_path / name, *extra))
        assert code == 0, err[-2000:]
        runs[name] = _outputs(tmp_path / name)
    qdrop_losses = runs["qdrop"][1]["unit_losses"]
    assert runs["mrecg"][1]["baseline_unit_losses"] == qdrop_losses
    assert runs["reuse"][1]["baseline_unit_losses"] == qdrop_losses
    (mrecg, mrecg_losses, mrecg_weights), (reuse, reuse_losses, reuse_weights) = runs["mrecg"], runs["reuse"]
    assert reuse["scheme"] == mrecg["scheme"] and reuse["ptq_top1"] == mrecg["ptq_top1"]
    assert reuse_losses["unit_losses"] == mrecg_losses["unit_losses"]
    assert reuse["baseline_run"] == str(qdrop_run) and mrecg["baseline_run"] is None
    # this model's search selects no merge: MRECG keeps its search pass, the QDrop run to the bit
    assert mrecg["scheme"] == str(list(range(len(qdrop_losses)))) and mrecg["search_pass_kept"]
    assert mrecg["ptq_top1"] == runs["qdrop"][0]["ptq_top1"] and mrecg_losses["unit_losses"] == qdrop_losses
    for a, b in zip(runs["qdrop"][2], mrecg_weights):
        np.testing.assert_array_equal(a, b)


def test_mrecg_loss_interrupted_in_a_kept_search_pass_resumes_to_the_qdrop_run(capsys, tmp_path, fp_checkpoint,
                                                                               qdrop_run):
    """A crash inside MRECG-loss's search pass, then the same command: the pass resumes after its last
    checkpointed unit and, merging nothing, is kept: the uninterrupted QDrop run to the bit."""
    run = tmp_path / "mrecg"
    code, err = run_ptq(capsys, *ptq_args(fp_checkpoint, run, "--method=mrecg_loss", "--crash_after_units=2"))
    assert code == 1 and "simulated crash after 2 reconstruction units" in err
    code, err = run_ptq(capsys, *ptq_args(fp_checkpoint, run, "--method=mrecg_loss"))
    assert code == 0, err[-2000:]
    (qdrop, qdrop_losses, qdrop_weights), (mrecg, mrecg_losses, mrecg_weights) = _outputs(qdrop_run), _outputs(run)
    assert mrecg["search_pass_kept"] and mrecg["resumed_units"] == 2 and not (run / "checkpoints" / "units").exists()
    assert mrecg["ptq_top1"] == qdrop["ptq_top1"] and mrecg_losses["unit_losses"] == qdrop_losses["unit_losses"]
    for a, b in zip(qdrop_weights, mrecg_weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("extra, needle", [
    (["--method=qdrop"], "applies to --method=mrecg_loss"),
    (["--method=mrecg_loss", "--iters=5"], "ran with --iters=4, this run has --iters=5"),
])
def test_bad_baseline_run_is_refused(capsys, tmp_path, fp_checkpoint, qdrop_run, extra, needle):
    code, err = run_ptq(capsys, *ptq_args(fp_checkpoint, tmp_path / "run", f"--baseline_run={qdrop_run}", *extra))
    assert code == 2 and needle in err and "Traceback" not in err, err[-2000:]
    code, err = run_ptq(capsys, *ptq_args(fp_checkpoint, tmp_path / "run2", "--method=mrecg_loss",
                                          f"--baseline_run={tmp_path / 'nothing'}"))
    assert code == 2 and "is not a finished ptq.py run" in err, err[-2000:]
