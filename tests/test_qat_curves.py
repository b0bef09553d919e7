"""benchmarks/qat_curves.py on TensorBoard logs written here: row filter, artifact name, missing logs."""

import json

import pytest
import tensorflow as tf

from benchmarks import qat_curves


def _logs(run_dir, train, validation, stage="qat"):
    for split, values in (("train", train), ("validation", validation)):
        writer = tf.summary.create_file_writer(str(run_dir / "tensorboard" / stage / split))
        with writer.as_default():
            for epoch, value in enumerate(values):
                tf.summary.scalar("epoch_accuracy", value, step=epoch)
        writer.close()


def test_curves_of_chosen_rows_with_the_commits_of_those_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(qat_curves, "RESULTS", str(tmp_path))
    runs = [dict(model="repvgg_a0", label=label, seed=0, commit=commit, metrics={"fp": 98.5})
            for label, commit in (("RepQ W4A4", "aaaaaaa1"), ("RepQ-BNEst W4A4", "bbbbbbb2"),
                                  ("Merged LSQ W4A4", "ccccccc3"))]
    (tmp_path / "qat_results.json").write_text(json.dumps(dict(runs=runs)))
    _logs(tmp_path / "runs" / "repvgg_a0_s0_repq_w4a4", [0.5, 0.75], [0.625, 0.875])
    _logs(tmp_path / "runs" / "repvgg_a0_s0_repq-bnest_w4a4", [0.25], [0.5])  # Merged LSQ: no logs here
    argv = ["--runs_dir", str(tmp_path / "runs"), "--labels", "RepQ W4A4", "Merged LSQ W4A4", "--name", "few"]
    qat_curves.main(argv)
    text = (tmp_path / "few.md").read_text()
    assert "| repvgg_a0 | RepQ W4A4 | 0 | 98.50 | 50.0, 75.0 | 62.5, 87.5 |" in text
    table_rows = [line for line in text.splitlines() if line.startswith("| repvgg_a0 |")]
    assert len(table_rows) == 1 and "at commit aaaaaaa (" in text  # BNEst not asked for, merged LSQ has no logs
    assert (tmp_path / "few.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no QAT logs"):
        qat_curves.main(["--runs_dir", str(tmp_path / "runs"), "--labels", "Merged LSQ W4A4"])


def test_fp_stage_curves_of_the_runs_that_trained_an_fp_model(tmp_path, monkeypatch):
    """--stage fp reads tensorboard/fp: the FP row counts, a row that loaded its FP model has no FP logs;
    --models keeps one model."""
    monkeypatch.setattr(qat_curves, "RESULTS", str(tmp_path))
    runs = [dict(model=model, label=label, seed=0, commit="ddddddd4", metrics={"fp": 99.0})
            for model in ("ac_resnet18", "repvgg_a0") for label in ("FP", "RepQ-BNEst W4A4", "RepQ W4A4")]
    (tmp_path / "qat_results.json").write_text(json.dumps(dict(runs=runs)))
    for model in ("ac_resnet18", "repvgg_a0"):
        _logs(tmp_path / "runs" / f"{model}_s0_fp", [0.5] * 11 + [0.625], [0.25] * 12, stage="fp")  # > 10 epochs
        _logs(tmp_path / "runs" / f"{model}_s0_repq-bnest_w4a4", [0.75, 1.0], [0.125, 0.5], stage="fp")
        _logs(tmp_path / "runs" / f"{model}_s0_repq_w4a4", [0.5], [0.5])  # QAT logs only
    qat_curves.main(["--runs_dir", str(tmp_path / "runs"), "--stage", "fp", "--models", "ac_resnet18", "--name", "fp"])
    text = (tmp_path / "fp.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ac_resnet18")]
    assert "| repvgg_a0 |" not in text and "FP epoch" in text
    assert rows == [f"| ac_resnet18 | FP | 0 | 99.00 | {'50.0, ' * 11}62.5 | {', '.join(['25.0'] * 12)} |",
                    "| ac_resnet18 | RepQ-BNEst W4A4 | 0 | 99.00 | 75.0, 100.0 | 12.5, 50.0 |"]
