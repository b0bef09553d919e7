"""Integer TFLite fidelity of the QAT table's trained models: export.py on every run, side by side.

    python benchmarks/trained_fidelity.py --models repvgg_a0 ecbsr_m4c16_x2 --seeds 0 1 2 \
        [--runs_dir runs/qat_results] [--rows "RepQ W4A4" ...] [--num_eval 1000]

For every quantized row of ``benchmarks/qat_results.py`` (its run dirs ``<model>_s<seed>_<row>``
under --runs_dir; the tfmot rows are tfmot's own tf_keras models and are left out) this runs
``export.py --format tflite`` as a user would and reads its fidelity report: the trained QAT model
against the integer TFLite model on LiteRT's default CPU runtime (XNNPACK) and on TFLite's builtin
kernels, on --num_eval class-stratified test images (the whole mnist5k test split by default; SR:
every test image), and the QAT model computed in integers (``repq.integer_predict``) against the
XNNPACK model. Differences are in output quantization steps.

Writes benchmarks/results/trained_fidelity.{json,md,png} with the commit and the command; the rows
this call does not measure (other models, other --rows) are kept from the earlier artefact, and so are
the earlier exports of --seeds whose run dirs are not on this machine, where they exported the run that
qat_results.json holds for that seed (same commit): a table that grows seed by seed, as qat_results.py's
does; each row names the commits of its exports.
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)

from benchmarks.provenance import markdown_header, provenance, repo_relative  # noqa: E402
from benchmarks.qat_results import ALL_ROWS, MODELS, load_runs, run_record, slug  # noqa: E402

QUANTIZED_ROWS = [label for label, flags in ALL_ROWS if "--method=fp" not in flags and "tfmot" not in label]
ARTIFACT = "trained_fidelity"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=["repvgg_a0", "ecbsr_m4c16_x2"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", choices=QUANTIZED_ROWS, default=QUANTIZED_ROWS,
                   help="QAT table rows to export (default: every quantized row that has runs)")
    p.add_argument("--runs_dir", default=os.path.join(ROOT, "runs", "qat_results"),
                   help="benchmarks/qat_results.py's --runs_dir")
    p.add_argument("--num_eval", type=int, default=1000, help="test images per export (export.py --num_eval)")
    p.add_argument("--results_dir", default=RESULTS)
    args = p.parse_args(argv)
    if args.num_eval < 1:
        p.error(f"--num_eval={args.num_eval} must be >= 1.")
    return args


def find_runs(args):
    """``[(model, row, seed, run dir)]`` of the finished runs (holding train.py's results.json)."""
    runs = [(model, row, seed, os.path.join(args.runs_dir, f"{model}_s{seed}_{slug(row)}"))
            for model in args.models for row in args.rows for seed in args.seeds]
    found = [r for r in runs if os.path.isfile(os.path.join(r[3], "results.json"))]
    missing = sorted({m for m in args.models} - {r[0] for r in found})
    if missing:
        sys.exit(f"trained_fidelity.py: error: no finished QAT run of {', '.join(missing)} under {args.runs_dir!r}; "
                 f"train them with `python benchmarks/qat_results.py --models {' '.join(missing)}` "
                 "(or pass its --runs_dir).")
    return found


def export_report(run_dir, num_eval):
    """export.py's TFLite fidelity report of ``run_dir`` (its conv list left out) and the export's wall time."""
    from repq.cli import export

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "export")
        start = time.time()
        code = export.main(["--checkpoint", run_dir, "--format", "tflite", "--output", out,
                            "--num_eval", str(num_eval)])
        if code != 0:
            raise RuntimeError(f"export.py exited with {code} on {run_dir}")
        with open(os.path.join(out, "model_int8_fidelity.json")) as f:
            report = json.load(f)
    report.pop("graph", None)
    report["wall_s"] = time.time() - start
    return report


def metric_pair(report):
    """``(Keras QAT metric, TFLite metric, unit)`` of one report (top-1 % or PSNR dB)."""
    if "psnr_keras" in report:
        return report["psnr_keras"], report["psnr_tflite"], "dB"
    return 100 * report["accuracy_keras"], 100 * report["accuracy_tflite"], "%"


def summarize(model, row, runs):
    """One table row over the seeds' reports ``runs`` (list of dicts with 'seed' and 'report')."""
    reports = [r["report"] for r in runs]
    builtin = [r["builtin_kernels"] for r in reports]
    emulated = [r["integer_emulation"] for r in reports]
    pairs = [metric_pair(r) for r in reports]
    builtin_pairs = [metric_pair(b) for b in builtin]
    classifier = "top1_agreement" in reports[0]
    return dict(
        model=model, row=row, seeds=[r["seed"] for r in runs], unit=pairs[0][2],
        num_images=reports[0]["num_images"], classes_covered=reports[0].get("classes_covered"),
        keras=sum(p[0] for p in pairs) / len(pairs), tflite=sum(p[1] for p in pairs) / len(pairs),
        largest_metric_gap=max(abs(p[1] - p[0]) for p in pairs),
        builtin_tflite=sum(p[1] for p in builtin_pairs) / len(pairs),
        largest_builtin_metric_gap=max(abs(p[1] - p[0]) for p in builtin_pairs),
        top1_agreement_min=min(r["top1_agreement"] for r in reports) if classifier else None,
        builtin_top1_agreement_min=min(b["top1_agreement"] for b in builtin) if classifier else None,
        xnnpack_max_steps=max(r["max_abs_diff_steps"] for r in reports),
        xnnpack_mean_steps=sum(r["mean_abs_diff_steps"] for r in reports) / len(reports),
        builtin_max_steps=max(b["max_abs_diff_steps"] for b in builtin),
        builtin_mean_steps=sum(b["mean_abs_diff_steps"] for b in builtin) / len(reports),
        integer_max_steps=max(e["max_abs_diff_steps"] for e in emulated),
        integer_bit_exact_min=min(e["bit_exact_fraction"] for e in emulated),
        integer_graph=all(r["integer_only"] and r["all_convs_integer"] and r["weights_on_grid"]
                          and r["scales_match_learned"] for r in reports),
        size_bytes=reports[0]["size_bytes"], wall_s=sum(r["wall_s"] for r in reports) / len(reports))


def markdown(info, rows):
    lines = [markdown_header(info),
             "Trained QAT models of `benchmarks/qat_results.py` exported by `export.py --format tflite`; metric means "
             "over the seeds; differences in output quantization steps (max over the seeds' outputs, mean of their "
             "means). XNNPACK = LiteRT's default CPU runtime, builtin = TFLite's builtin (reference) kernels; "
             "integer-exact = the QAT model computed in integers (`repq.integer_predict`) against the XNNPACK model. "
             "Rows and seeds the command above did not export are kept from earlier commands (the `commit` column "
             "names the commits of each row's exports).",
             "",
             "| model | row | seeds | images | Keras QAT | TFLite (XNNPACK) | largest gap | top-1 agree (min) "
             "| XNNPACK vs float QAT: max / mean steps | integer-exact vs XNNPACK: max steps / bit-exact (min) "
             "| builtin kernels: metric, agree (min), max / mean steps | integer graph | .tflite | s/export | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        agree = "-" if r["top1_agreement_min"] is None else f"{100 * r['top1_agreement_min']:.1f} %"
        builtin_agree = "" if r["builtin_top1_agreement_min"] is None else \
            f", {100 * r['builtin_top1_agreement_min']:.1f} %"
        lines.append(
            f"| {r['model']} | {r['row']} | {len(r['seeds'])} | {r['num_images']} | {r['keras']:.2f} {r['unit']} "
            f"| {r['tflite']:.2f} {r['unit']} | {r['largest_metric_gap']:.2f} | {agree} "
            f"| {r['xnnpack_max_steps']:.0f} / {r['xnnpack_mean_steps']:.3f} "
            f"| {r['integer_max_steps']:.0f} / {100 * r['integer_bit_exact_min']:.2f} % "
            f"| {r['builtin_tflite']:.2f} {r['unit']}{builtin_agree}, {r['builtin_max_steps']:.0f} / "
            f"{r['builtin_mean_steps']:.2f} | {r['integer_graph']} | {r['size_bytes'] / 1e6:.2f} MB "
            f"| {r['wall_s']:.0f} | {', '.join(c[:7] for c in (r.get('commit') or '?').split(', '))} |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    from benchmarks.export_fidelity import plot as fidelity_bars

    fidelity_bars(rows, path, labels=[f"{r['model']}\n{r['row']}" for r in rows])


def earlier(path, measured_rows, measured_runs, seeds, table_commits):
    """``(rows, runs)`` of the artefact at ``path`` (none if there is none) that this call keeps: the rows and
    runs of every ``(model, row)`` not in ``measured_rows``; of those measured, the runs of ``seeds`` not in
    ``measured_runs`` (``(model, row, seed)``: run dirs on another machine) that exported the QAT run the
    table holds for that seed (``table_commits``: same commit). Each run carries its commit."""
    if not os.path.isfile(path):
        return [], []
    with open(path) as f:
        record = json.load(f)
    commits = {(r["model"], r["row"]): r.get("commit") for r in record["rows"]}

    def kept(r):
        key = (r["model"], r["row"], r["seed"])
        if (r["model"], r["row"]) not in measured_rows:
            return True
        return (r["seed"] in seeds and key not in measured_runs and r.get("qat_commit") is not None
                and r["qat_commit"] == table_commits.get(key))
    runs = [dict(r, commit=r.get("commit") or commits.get((r["model"], r["row"]))) for r in record["runs"] if kept(r)]
    return [r for r in record["rows"] if (r["model"], r["row"]) not in measured_rows], runs


def main(argv=None):
    args = parse_args(argv)
    runs = find_runs(args)
    from repq.cli_env import setup

    setup()
    from repq.training.artifacts import write_json, write_text

    info = provenance(argv and [sys.argv[0], *argv])
    measured = []
    for i, (model, row, seed, run_dir) in enumerate(runs):
        print(f"[{i + 1}/{len(runs)}] {model} {row} seed {seed}", flush=True)
        measured.append(dict(model=model, row=row, seed=seed, run=repo_relative(run_dir), commit=info["commit"],
                             qat_commit=(run_record(run_dir) or {}).get("commit"),
                             report=export_report(run_dir, args.num_eval)))
    base = os.path.join(args.results_dir, ARTIFACT)
    measured_rows = {(m["model"], m["row"]) for m in measured}
    kept_rows, kept_runs = earlier(base + ".json", measured_rows, {(m["model"], m["row"], m["seed"]) for m in measured},
                                   set(args.seeds), {(r["model"], r["label"], r["seed"]): r.get("commit")
                                                     for r in load_runs(args.results_dir)})
    by_row = {}  # (model, row) -> its seeds' runs (kept and measured), in --models / --rows order
    for m in measured + [r for r in kept_runs if (r["model"], r["row"]) in measured_rows]:
        by_row.setdefault((m["model"], m["row"]), []).append(m)
    rows = kept_rows + [dict(summarize(model, row, sorted(runs, key=lambda r: r["seed"])),
                             commit=", ".join(sorted({(r.get("commit") or "?")[:7] for r in runs})))
                        for (model, row), runs in by_row.items()]
    write_json(base + ".json", dict(provenance=info, args=repo_relative(vars(args)), rows=rows,
                                    runs=kept_runs + measured))
    table = markdown(info, rows)
    write_text(base + ".md", table)
    plot(rows, base + ".png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
