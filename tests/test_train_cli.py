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


@pytest.mark.slow
def test_smoke_run_writes_artefacts_and_deploy_equals_qat(tmp_path):
    result = train("--model=repvgg_a0", "--bits=4", "--limit=16", "--batch_size=16", "--fp_epochs=1",
                   "--epochs=1", f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("fp_model.keras", "qat_model.keras", "deploy_model.keras", "results.json", "results.md",
                 "tensorboard"):
        assert (tmp_path / name).exists(), name
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"]["deploy"] == results["metrics"]["qat"]
    assert results["deploy_matches_qat"] and results["deploy_max_abs_diff"] == 0.0
    assert 0.0 <= results["metrics"]["integer"] <= 100.0  # the int8 TFLite model, via repq.integer_predict
