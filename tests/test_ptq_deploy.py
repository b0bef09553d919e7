"""PTQ results deploy: PTQ reconstructs on repq.quantize_model's wrappers, so its model is a QAT-format
model with symmetric weights on QAT's grid that the int8 export takes as it is, bit-exact with LiteRT."""

import os

import numpy as np
import pytest

import repq
from repq.data import get_dataset
from repq.ptq import quantize_ptq
from repq.qat.quant_layers import QuantWrapper
from repq.qat.transform import quantized_layers
from tests.test_ptq import data, residual_model


@pytest.mark.parametrize("method", ["rtn", "adaround"])
def test_ptq_grids_are_symmetric_and_deploy_exactly(method):
    """Weights: signed codes in [-2^(b-1), 2^(b-1)-1] (zero point 0, per output channel); the input behind
    a ReLU unsigned; the deploy form (``repq.reparametrize``) computes what the PTQ model does."""
    x = data(32, 1)
    ptq, _ = quantize_ptq(residual_model(), x, method, weight_bits=3, act_bits=4, iters=20, batch_size=16,
                          verbose=0)
    wrappers = {w.name: w for w in quantized_layers(ptq)}
    assert {n: (w.weight_bits, w.act_bits, w.input_signed) for n, w in wrappers.items()} == {
        "stem": (8, 8, True), "b_conv1": (3, 4, False), "b_conv2": (3, 4, False), "fc": (8, 8, False)}
    for wrapper in wrappers.values():
        quantizer = wrapper.weight_quantizer
        kernel = np.asarray(wrapper.quantized_kernel_and_bias()[0], np.float64)
        codes = kernel / np.asarray(quantizer.positive_step(), np.float64)
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        codes = np.round(codes)
        assert quantizer.qmin == -quantizer.qmax - 1 and quantizer.qmax == 2 ** (wrapper.weight_bits - 1) - 1
        assert codes.min() >= quantizer.qmin and codes.max() <= quantizer.qmax
    held_out = data(16, 7)
    np.testing.assert_array_equal(np.asarray(repq.reparametrize(ptq)(held_out)), np.asarray(ptq(held_out)))


def test_ptq_model_exports_bit_exact(tmp_path):
    """A 4-bit QDrop result of a residual classifier is exported as it is: integer-only, on the grid, and
    repq's integer emulation equals LiteRT bit for bit (tests/test_ptq_resume.py's model; the zoo's merged
    RepVGG-A0 passed too when an earlier form of this test was written, in several times the time)."""
    from tests.test_ptq_resume import residual_model as classifier

    fp = classifier((32, 32, 3), 10, stem_stride=4)
    train, _ = get_dataset("mnist5k", "train", 16, limit=32)
    test, _ = get_dataset("mnist5k", "test", 16, limit=32)
    calib = np.concatenate([x.numpy() for x, _ in train])
    ptq, _ = quantize_ptq(fp, calib, "qdrop", 4, 4, iters=2, batch_size=16, verbose=0)
    assert any(isinstance(l, QuantWrapper) for l in ptq.layers)
    _, report = repq.export_tflite(ptq, str(tmp_path / "m.tflite"), calib, [(x.numpy(), y.numpy()) for x, y in test])
    assert report["integer_only"] and report["all_convs_integer"] and report["weights_on_grid"], report
    assert report["scales_match_learned"]
    assert report["integer_emulation"]["max_abs_diff_steps"] == 0.0, report["integer_emulation"]
    # the integer model computes what the PTQ model computes, up to the int8 output grid
    x = calib[:8]
    y_int, y_ptq = repq.integer_predict(ptq, x), np.asarray(ptq(x))
    assert np.mean(np.argmax(y_int, -1) == np.argmax(y_ptq, -1)) >= 0.75


def test_ptq_cli_run_is_exported_by_export_cli(tmp_path, capsys):
    """What a user runs: ptq.py saves the PTQ model, export.py exports its run dir."""
    import json
    import os

    from repq.cli import export, ptq
    from tests.test_ptq_resume import residual_model as classifier

    fp_path = str(tmp_path / "fp.keras")
    classifier((32, 32, 3), 10, stem_stride=4).save(fp_path)
    run = tmp_path / "run"
    try:
        ptq.cli(["ptq.py", "--model=resnet18", "--method=brecq", "--weight_bits=4", "--act_bits=4",
                 "--calib_size=16", "--batch_size=8", "--iters=2", f"--fp_checkpoint={fp_path}", f"--output_dir={run}"])
    except SystemExit as err:
        assert err.code == 0, capsys.readouterr().err[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert "ptq_model.keras" in set(os.listdir(run))
    assert 0.0 <= results["deploy_top1"] <= 100.0 and results["deploy_top1"] == results["ptq_top1"]
    assert results["deploy_matches_ptq"] is True
    out = tmp_path / "export"
    assert export.main(["--checkpoint", str(run), "--output", str(out), "--num_eval", "8", "--num_calib", "16"]) == 0
    report = json.loads((out / "model_int8_fidelity.json").read_text())
    assert report["integer_only"] and report["integer_emulation"]["max_abs_diff_steps"] == 0.0, report


@pytest.mark.slow  # two CLI runs (~3 min)
def test_ptq_vs_qat_command_writes_one_table(tmp_path):
    """benchmarks/ptq_vs_qat.py at tiny size: a PTQ and a QAT run from one FP checkpoint, one table row each."""
    import json

    from benchmarks import ptq_vs_qat
    from repq import models
    from repq.training import save_model

    fp = models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3))
    save_model(fp, str(tmp_path / "fp.keras"))
    assert ptq_vs_qat.main(["--model", "repvgg_a0", "--fp_checkpoint", str(tmp_path / "fp.keras"), "--bits", "8",
                            "--ptq", "rtn", "--qat", "repq", "--seeds", "0", "--ptq_iters", "1", "--calib_size", "32",
                            "--qat_epochs", "1", "--limit", "32", "--runs_dir", str(tmp_path / "runs"),
                            "--results_dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "ptq_vs_qat_repvgg_a0.json").read_text())
    assert [(r["kind"], r["method"], r["bits"]) for r in report["rows"]] == [("ptq", "rtn", "W8A8"), ("qat", "repq", "W8A8")]
    assert all(0.0 <= r["mean"] <= 100.0 for r in report["rows"])
    assert "| PTQ rtn | " in (tmp_path / "ptq_vs_qat_repvgg_a0.md").read_text()
    assert {r["commit"] for r in report["runs"]} == {report["provenance"]["commit"][:7] + "+" * report["provenance"]["dirty"]}
    assert (tmp_path / "ptq_vs_qat_repvgg_a0.png").stat().st_size > 0


def test_ptq_vs_qat_bit_widths_and_plateau_measure():
    """``--bits`` takes B or W/A; ``late_fall`` is the last quarter's fall against the third quarter;
    ``units_above_rtn`` counts units whose final loss exceeds their start."""
    import argparse

    from benchmarks import ptq_vs_qat

    assert ptq_vs_qat.parse_args(["--fp_checkpoint", "x", "--bits", "4", "2/4"]).bits == [(4, 4), (2, 4)]
    for bad in ("1", "2/9", "4/4/4", "four"):
        with pytest.raises(argparse.ArgumentTypeError, match="2..8 bits"):
            ptq_vs_qat.bit_widths(bad)
    rec = [9.0, 9.0, 4.0, 4.0, 2.0, 2.0, 1.0, 1.0]  # quarters: 9, 4, 2, 1
    assert ptq_vs_qat.late_fall({"step": list(range(8)), "rec": rec}) == pytest.approx(0.5)
    assert ptq_vs_qat.late_fall({"step": [0, 1, 2, 3], "rec": [3.0, 3.0, 3.0, 3.0]}) == 0.0
    run = {"unit_loss_curves": [{"rec": rec}, {"rec": [3.0] * 4}, None]}
    assert ptq_vs_qat.median_late_fall(run) == pytest.approx(0.25)
    # units that end above their round-to-nearest start: 7 > 6 only (5 < 6, equal is not above)
    assert ptq_vs_qat.units_above_rtn({"unit_losses": [5.0, 7.0, 2.0], "unit_losses_init": [6.0, 6.0, 2.0]}) == [1, 3]
    assert ptq_vs_qat.units_above_rtn({"unit_losses": [], "unit_losses_init": []}) is None
    runs = [dict(kind="ptq", method="brecq", bits="W2A4", top1=t, unit_loss_curves=[{"rec": rec}], output_loss=o,
                 units_above_rtn=[a, 3]) for t, o, a in ((50.0, 2.0, 1), (54.0, 4.0, 2))]
    [row] = ptq_vs_qat.summary(runs)
    assert (row["mean"], row["std"], row["n"]) == (52.0, pytest.approx(2.0 ** 1.5), 2)
    assert (row["units_above_rtn"], row["units"]) == (1.5, 3)
    assert (row["late_fall"], row["output_loss"], row["output_loss_std"]) == (pytest.approx(0.5), 3.0, pytest.approx(2 ** 0.5))
    # ordering: qdrop 60 ± 1 vs brecq 52 ± 2.8 (beyond noise), brecq vs adaround 51.5 ± 0.7 (holds, within noise)
    runs += [dict(kind="ptq", method=m, bits="W2A4", top1=t, output_loss=o)
             for m, t, o in (("qdrop", 59.0, 1.0), ("qdrop", 61.0, 1.5), ("adaround", 51.0, 5.0), ("adaround", 52.0, 6.0))]
    args = ptq_vs_qat.parse_args(["--fp_checkpoint", "x", "--bits", "2/4", "--ptq", "rtn", "adaround", "brecq", "qdrop"])
    pairs = {c["pair"]: c for c in ptq_vs_qat.ordering(args, runs)}
    assert list(pairs) == ["qdrop ≥ brecq", "brecq ≥ adaround"]  # RTN not run: no pair
    args.ptq.append("mrecg_modcap")
    runs.append(dict(kind="ptq", method="mrecg_modcap", bits="W2A4", top1=58.0, output_loss=1.0))
    assert [c["pair"] for c in ptq_vs_qat.ordering(args, runs)] == [
        "mrecg_modcap ≥ qdrop", "qdrop ≥ brecq", "brecq ≥ adaround"]  # MRECG against the best of the others
    assert pairs["qdrop ≥ brecq"]["top1_holds"] and pairs["qdrop ≥ brecq"]["top1_beyond_noise"]
    assert pairs["qdrop ≥ brecq"]["output_holds"] and not pairs["qdrop ≥ brecq"]["output_beyond_noise"]
    assert pairs["brecq ≥ adaround"]["top1_holds"] and not pairs["brecq ≥ adaround"]["top1_beyond_noise"]
    assert pairs["brecq ≥ adaround"]["output_holds"] and pairs["brecq ≥ adaround"]["output_beyond_noise"]


def test_ptq_vs_qat_reports_each_runs_own_time_also_when_read_back():
    """The time table gives mean ± std of each run's recorded time (ptq.py's ptq_time_s, train.py's total),
    which a run read back from --runs_dir keeps; a row with an unrecorded time shows "-"."""
    from benchmarks import ptq_vs_qat

    runs = [dict(kind="ptq", method="qdrop", bits="W3A3", top1=98.0, fp=99.0, run_s=s) for s in (400.0, 420.0, 440.0)]
    runs += [dict(kind="ptq", method="rtn", bits="W3A3", top1=75.0, fp=99.0, run_s=None)]
    rows = {r["method"]: r for r in ptq_vs_qat.summary(runs)}
    assert (rows["qdrop"]["run_s"], rows["qdrop"]["run_s_std"]) == (420.0, pytest.approx(20.0))
    assert rows["rtn"]["run_s"] is None
    args = ptq_vs_qat.parse_args(["--fp_checkpoint", "x", "--bits", "3", "--ptq", "rtn", "qdrop", "--qat"])
    text = ptq_vs_qat.markdown(args, runs, list(rows.values()), dict(command="c", commit="0" * 40, dirty=False, date="d"))
    times = text[text.index("Time per run"):]
    assert "| PTQ qdrop | 420 ± 20 |" in times and "| PTQ rtn | - |" in times


def test_ptq_vs_qat_reports_each_runs_commit(tmp_path):
    """A run dir's RUN_COMMIT gives the run's commit (``+`` when the tree had uncommitted changes); a run dir
    without one (made before runs recorded it) is 'unrecorded'; the table ends with the commits and their counts."""
    import json

    from benchmarks import ptq_vs_qat

    made, dirty, old = (tmp_path / name for name in ("made", "dirty", "old"))
    for path, record in ((made, dict(commit="a" * 40, dirty=False)), (dirty, dict(commit="b" * 40, dirty=True))):
        path.mkdir()
        (path / ptq_vs_qat.RUN_COMMIT).write_text(json.dumps(record))
    old.mkdir()
    assert [ptq_vs_qat.run_commit(str(p)) for p in (made, dirty, old)] == ["aaaaaaa", "bbbbbbb+", None]
    runs = [dict(kind="ptq", method="rtn", bits="W3A3", top1=75.0, fp=99.0, commit=c)
            for c in ("aaaaaaa", "aaaaaaa", "bbbbbbb+", None)]
    args = ptq_vs_qat.parse_args(["--fp_checkpoint", "x", "--bits", "3", "--ptq", "rtn", "--qat"])
    text = ptq_vs_qat.markdown(args, runs, ptq_vs_qat.summary(runs), dict(command="c", commit="0" * 40, dirty=False,
                                                                           date="d"))
    line = text.strip().splitlines()[-1]
    assert line.startswith("Runs made at: aaaaaaa (2 runs), bbbbbbb+ (1 run), unrecorded (1 run)")


def test_ptq_vs_qat_records_a_new_runs_commit_and_keeps_a_reused_ones(tmp_path, monkeypatch):
    """``run_one`` with ptq.py replaced by a stub that writes a finished run: a new run records the commit of the tree
    at its start; called again, the finished run is read back (no subprocess) with the commit it was made at, also
    when the tree has moved on since."""
    import json

    from benchmarks import ptq_vs_qat

    calls = []

    def fake_ptq(cmd, **kwargs):  # a finished ptq.py run in its --output_dir
        calls.append(cmd)
        out = next(a.split("=", 1)[1] for a in cmd if a.startswith("--output_dir="))
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(dict(deploy_top1=97.0, fp_top1=99.0, ptq_time_s=1.0), f)
        with open(os.path.join(out, "unit_losses.json"), "w") as f:
            json.dump(dict(unit_losses=[1.0], unit_losses_init=[2.0], unit_loss_curves=None), f)

    monkeypatch.setattr(ptq_vs_qat.subprocess, "run", fake_ptq)
    monkeypatch.setattr(ptq_vs_qat, "provenance", lambda: dict(commit="c" * 40, dirty=True))
    args = ptq_vs_qat.parse_args(["--fp_checkpoint", str(tmp_path / "fp.keras"), "--bits", "4", "--ptq", "rtn",
                                  "--runs_dir", str(tmp_path / "runs")])
    first = ptq_vs_qat.run_one(args, "ptq", "rtn", (4, 4), 0)
    assert (first["commit"], first["top1"], len(calls)) == ("ccccccc+", 97.0, 1)
    monkeypatch.setattr(ptq_vs_qat, "provenance", lambda: dict(commit="d" * 40, dirty=False))
    again = ptq_vs_qat.run_one(args, "ptq", "rtn", (4, 4), 0)
    assert (again["commit"], len(calls)) == ("ccccccc+", 1)


def test_artefacts_name_repository_paths_relative():
    """Benchmarks record run commands and arguments without this checkout's absolute path."""
    from benchmarks.provenance import ROOT, repo_relative

    run = os.path.join(ROOT, "runs", "x", "fp_model.keras")
    assert repo_relative(f"python ptq.py --fp_checkpoint={run}") == "python ptq.py --fp_checkpoint=runs/x/fp_model.keras"
    assert repo_relative({"runs_dir": os.path.join(ROOT, "runs"), "seeds": [0], "other": "/elsewhere/y"}) == {
        "runs_dir": "runs", "seeds": [0], "other": "/elsewhere/y"}
