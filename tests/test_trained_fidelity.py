"""benchmarks/trained_fidelity.py: which runs it exports, and its table over the seeds.

export.py itself runs end to end on a trained run in test_train_cli.py; here its fidelity report is
replaced by hand-made ones, so the aggregation over seeds can be checked value by value.
"""

import json

import pytest

from benchmarks import trained_fidelity


def _report(keras_acc, tflite_acc, agree, max_steps, builtin_agree, exact=1.0, mean_steps=0.5, wall_s=10.0):
    body = dict(num_images=1000, output_step=0.1, max_abs_diff_steps=max_steps, mean_abs_diff_steps=mean_steps,
                top1_agreement=agree, accuracy_keras=keras_acc, accuracy_tflite=tflite_acc)
    return dict(body, classes_covered=10, size_bytes=2_000_000, integer_only=True, all_convs_integer=True,
                weights_on_grid=True, scales_match_learned=True, wall_s=wall_s,
                integer_emulation=dict(body, max_abs_diff_steps=0.0 if exact == 1.0 else 1.0,
                                       bit_exact_fraction=exact),
                builtin_kernels=dict(body, max_abs_diff_steps=10 * max_steps, mean_abs_diff_steps=3 * mean_steps,
                                     top1_agreement=builtin_agree, accuracy_tflite=tflite_acc - 0.01))


def _finished_run(runs_dir, name):
    (runs_dir / name).mkdir(parents=True)
    (runs_dir / name / "results.json").write_text("{}")


def test_models_without_finished_runs_are_named_with_the_command_that_trains_them(tmp_path):
    with pytest.raises(SystemExit) as stop:
        trained_fidelity.main(["--models", "ac_resnet18", "--runs_dir", str(tmp_path)])
    assert "ac_resnet18" in str(stop.value) and "benchmarks/qat_results.py --models ac_resnet18" in str(stop.value)


def test_a_bad_num_eval_is_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as stop:
        trained_fidelity.parse_args(["--num_eval", "0"])
    assert stop.value.code == 2 and "--num_eval=0 must be >= 1" in capsys.readouterr().err


def test_rows_aggregate_the_seeds_and_other_models_rows_are_kept(tmp_path, monkeypatch):
    runs, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    for seed in (0, 1):
        _finished_run(runs, f"repvgg_a0_s{seed}_repq_w4a4")
    _finished_run(runs, "repvgg_a0_s0_repq_w8a8")  # not asked for below
    reports = {"repvgg_a0_s0_repq_w4a4": _report(0.98, 0.98, 1.0, 4.0, 0.97, mean_steps=0.2, wall_s=30.0),
               "repvgg_a0_s1_repq_w4a4": _report(0.97, 0.968, 0.996, 9.0, 0.95, exact=0.999, mean_steps=0.6,
                                                 wall_s=50.0)}
    exported = []

    def fake_export(run_dir, num_eval):
        exported.append((run_dir.split("/")[-1], num_eval))
        return reports[run_dir.split("/")[-1]]

    monkeypatch.setattr(trained_fidelity, "export_report", fake_export)
    earlier = dict(provenance={}, rows=[dict(model="ecbsr_m4c16_x2", row="RepQ W4A4", kept=True),
                                        dict(model="repvgg_a0", row="RepQ W8A8", kept=True),
                                        dict(model="repvgg_a0", row="RepQ W4A4", stale=True)],
                   runs=[dict(model="ecbsr_m4c16_x2", row="RepQ W4A4", seed=0),
                         dict(model="repvgg_a0", row="RepQ W8A8", seed=0),
                         dict(model="repvgg_a0", row="RepQ W4A4", seed=5)])
    (results / "trained_fidelity.json").write_text(json.dumps(earlier))
    monkeypatch.setattr(trained_fidelity, "markdown", lambda info, rows: "table\n")
    monkeypatch.setattr(trained_fidelity, "plot", lambda rows, path: None)
    assert trained_fidelity.main(["--models", "repvgg_a0", "--rows", "RepQ W4A4", "--seeds", "0", "1", "2",
                                  "--runs_dir", str(runs), "--results_dir", str(results), "--num_eval", "64"]) == 0
    assert exported == [("repvgg_a0_s0_repq_w4a4", 64), ("repvgg_a0_s1_repq_w4a4", 64)]  # seed 2 has no run
    record = json.loads((results / "trained_fidelity.json").read_text())
    # rows not measured again (another model, another row of this model) stay; the re-measured one is replaced
    assert record["rows"][:2] == earlier["rows"][:2] and len(record["rows"]) == 3
    assert [(r["row"], r["seed"]) for r in record["runs"]] == [("RepQ W4A4", 0), ("RepQ W8A8", 0),
                                                             ("RepQ W4A4", 0), ("RepQ W4A4", 1)]
    row = record["rows"][2]
    assert row["seeds"] == [0, 1] and row["unit"] == "%"
    assert row["keras"] == pytest.approx(97.5) and row["tflite"] == pytest.approx(97.4)
    assert row["largest_metric_gap"] == pytest.approx(0.2)  # seed 1: 96.8 against 97.0
    assert row["builtin_tflite"] == pytest.approx(96.4) and row["largest_builtin_metric_gap"] == pytest.approx(1.2)
    assert row["top1_agreement_min"] == 0.996 and row["builtin_top1_agreement_min"] == 0.95
    assert (row["xnnpack_max_steps"], row["builtin_max_steps"], row["integer_max_steps"]) == (9.0, 90.0, 1.0)
    assert row["integer_bit_exact_min"] == 0.999 and row["integer_graph"] is True
    assert row["xnnpack_mean_steps"] == pytest.approx(0.4) and row["builtin_mean_steps"] == pytest.approx(1.2)
    assert row["wall_s"] == pytest.approx(40.0)
    assert row["commit"] == record["provenance"]["commit"][:7]


def test_runs_of_asked_seeds_whose_run_dirs_are_gone_are_kept_in_their_row(tmp_path, monkeypatch):
    """Seed 0 exported in an earlier session (its run dir is not here), seed 1 now: the row covers both, and
    names both commits; a seed not asked for (--seeds), or whose QAT run changed since, is dropped."""
    runs, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    _finished_run(runs, "ac_resnet18_s1_repq_w4a4")
    monkeypatch.setattr(trained_fidelity, "export_report", lambda run_dir, num_eval: _report(0.97, 0.97, 1.0, 2.0, 0.99))
    earlier = dict(provenance={}, rows=[dict(model="ac_resnet18", row="RepQ W4A4", commit="1111111aaaa")],
                   runs=[dict(model="ac_resnet18", row="RepQ W4A4", seed=s, qat_commit=c,
                              report=_report(0.99, 0.99, 1.0, 4.0, 0.98))
                         for s, c in ((0, "q0"), (7, "q7"), (2, "stale"))])
    (results / "trained_fidelity.json").write_text(json.dumps(earlier))
    # the QAT table's runs: seed 2 was retrained since its export (another commit), so that export is dropped
    (results / "qat_results.json").write_text(json.dumps(dict(runs=[
        dict(model="ac_resnet18", label="RepQ W4A4", seed=s, commit=c) for s, c in ((0, "q0"), (2, "q2"), (7, "q7"))])))
    monkeypatch.setattr(trained_fidelity, "markdown", lambda info, rows: "table\n")
    monkeypatch.setattr(trained_fidelity, "plot", lambda rows, path: None)
    trained_fidelity.main(["--models", "ac_resnet18", "--rows", "RepQ W4A4", "--seeds", "0", "1", "2",
                           "--runs_dir", str(runs), "--results_dir", str(results)])
    record = json.loads((results / "trained_fidelity.json").read_text())
    (row,) = record["rows"]
    assert row["seeds"] == [0, 1] and row["keras"] == pytest.approx(98.0) and row["xnnpack_max_steps"] == 4.0
    assert row["commit"] == ", ".join(sorted(["1111111", record["provenance"]["commit"][:7]]))
    assert sorted(r["seed"] for r in record["runs"]) == [0, 1]


def _sr(report, keras_psnr, tflite_psnr):
    """A classifier's fake report as an SR report (PSNR, no top-1)."""
    drop = ("top1_agreement", "accuracy_keras", "accuracy_tflite", "classes_covered")
    return dict({k: v for k, v in report.items() if k not in drop}, psnr_keras=keras_psnr, psnr_tflite=tflite_psnr)


def test_markdown_gives_one_line_per_row_with_its_unit(tmp_path):
    report = _report(0, 0, 1.0, 2.0, 1.0)
    report = dict(_sr(report, 32.03, 32.05), builtin_kernels=_sr(report["builtin_kernels"], 32.03, 32.0),
                  integer_emulation=_sr(report["integer_emulation"], 32.03, 32.05))
    row = trained_fidelity.summarize("ecbsr_m4c16_x2", "RepQ W8A8", [dict(seed=0, report=report)])
    assert row["top1_agreement_min"] is None and row["unit"] == "dB"
    text = trained_fidelity.markdown(dict(command="python benchmarks/trained_fidelity.py", commit="abc", dirty=False,
                                          date="now"), [dict(row, commit="abcdef123")])
    assert "| ecbsr_m4c16_x2 | RepQ W8A8 | 1 | 1000 | 32.03 dB | 32.05 dB | 0.02 | - | 2 / 0.500 | 0 / 100.00 % " \
           "| 32.00 dB, 20 / 1.50 | True | 2.00 MB | 10 | abcdef1 |" in text
    trained_fidelity.plot([row], str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0
