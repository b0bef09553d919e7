"""train.py end to end (subprocess): usage errors and a tiny smoke run."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(*args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# One real process checks the exit code end to end; the other messages are covered
# in-process (tests/test_hostile_inputs.py), since each process costs a TF import.
@pytest.mark.parametrize("args, message", [
    (["--bits=9"], "--weight_bits=9: bit width must be an integer in [2, 8]"),
])
def test_usage_errors_exit_2_with_one_line(args, message, tmp_path):
    result = train(*args, f"--output_dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def export_cli(*args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_main_job_end_to_end_at_tiny_size_then_export(tmp_path):
    """The README's main job (RepVGG-A0, 4-bit RepQ-BNEst) at a handful of steps, then export.py on its run dir.
    Two QAT epochs: the recipe freezes the BN statistics after the first."""
    run_dir = tmp_path / "run"
    result = train("--model=repvgg_a0", "--bits=4", "--bnest", "--limit=16", "--batch_size=16", "--fp_epochs=1",
                   "--epochs=2", f"--output_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Epoch 2: FreezeNormStatistics: BN statistics frozen in 22 rep blocks" in result.stdout
    assert f"run directory {run_dir}" in result.stderr.splitlines()[0]
    for name in ("fp_model.keras", "qat_model.keras", "deploy_model.keras", "results.json", "results.md",
                 "tensorboard"):
        assert (run_dir / name).exists(), name
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["model"], results["method"], results["bnest"]) == ("repvgg_a0", "repq", True)
    assert (results["weight_bits"], results["act_bits"], results["metric"]) == (4, 4, "top1")
    metrics = results["metrics"]
    assert set(metrics) == {"fp", "qat", "deploy", "integer"}
    assert all(0.0 <= value <= 100.0 for value in metrics.values())
    assert metrics["deploy"] == metrics["qat"]
    assert results["deploy_matches_qat"] and results["deploy_max_abs_diff"] == 0.0
    assert results["kept_fp_accuracy"] == (metrics["qat"] >= metrics["fp"] - 1.0)
    assert results["verdict"] in result.stdout and results["times"]["total_s"] > 0

    run_files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    out = tmp_path / "export"
    exported = export_cli(f"--checkpoint={run_dir}", "--format=tflite", f"--output={out}", "--num_eval=16",
                          "--num_calib=16")
    assert exported.returncode == 0, exported.stderr[-3000:]
    report = json.loads((out / "model_int8_fidelity.json").read_text())
    assert report["integer_only"] and report["weights_on_grid"]
    assert report["integer_emulation"]["bit_exact_fraction"] == 1.0
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == run_files  # run dir untouched


def test_ptq_initialised_merged_qat_at_tiny_size(tmp_path):
    """--ptq_init: PTQ of the FP model, then merged QAT fine-tuning from the PTQ result."""
    run_dir = tmp_path / "run"
    result = train("--model=repvgg_a0", "--bits=4", "--method=merged_lsq", "--ptq_init=brecq", "--ptq_iters=2",
                   "--ptq_calib_size=16", "--limit=16", "--batch_size=16", "--fp_epochs=1", "--epochs=1",
                   f"--output_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PTQ initialisation (brecq, W4A4): 16 calibration images, 2 iterations per unit" in result.stderr
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["metrics"]) == {"fp", "ptq", "qat", "deploy", "integer"}
    assert results["deploy_matches_qat"]
    bad = train("--model=repvgg_a0", "--method=repq", "--ptq_init=qdrop", f"--output_dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "use it with --method=merged_lsq" in bad.stderr


def test_tfmot8_baseline_end_to_end_at_tiny_size(tmp_path):
    """--method=tfmot8: FP training, then tfmot's 8-bit QAT of the merged model in a tf_keras subprocess."""
    run_dir = tmp_path / "run"
    result = train("--model=repvgg_a0", "--method=tfmot8", "--bits=8", "--limit=16", "--batch_size=16",
                   "--fp_epochs=1", "--epochs=1", f"--output_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert (results["method"], results["weight_bits"], results["act_bits"]) == ("tfmot8", 8, 8)
    assert set(results["metrics"]) == {"fp", "tfmot8"}
    assert all(0.0 <= value <= 100.0 for value in results["metrics"].values())
    assert results["verdict"] in result.stdout
    tfmot = json.loads((run_dir / "tfmot8.json").read_text())
    assert tfmot["top1"] == results["metrics"]["tfmot8"] and {"top1_before_qat", "top1_float"} <= set(tfmot)


@pytest.mark.parametrize("fp, quantized", [(98.8, 98.5), (98.9, 98.6), (99.0, 98.7)])
def test_verdict_at_exactly_the_tolerance_is_kept(fp, quantized):
    """A drop of exactly 0.3 pt is within the 8-bit tolerance whatever the float rounding of the difference
    (98.6 - 98.9 is -0.30000000000000426); 0.1 pt more is not."""
    from repq.cli.train import verdict

    kept, line = verdict("top1", fp, quantized, 8)
    assert kept and "KEPT" in line and "-0.30 pt" in line
    assert not verdict("top1", fp, round(quantized - 0.1, 1), 8)[0]
