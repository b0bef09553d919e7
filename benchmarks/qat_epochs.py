"""How the QAT budget moves the 4-bit drop: QAT rows run for several QAT epoch counts from one FP model.

Each row of ``benchmarks/qat_results.py`` (RepQ W4A4, merged LSQ W4A4, RepQ-BNEst W4A4, ...) is
trained with ``train.py --epochs=E`` for every E, always from the same FP checkpoint
(``--fp_checkpoint``; ``--bnest_fp_checkpoint`` for the BNEst rows), so the only difference between
two runs of a row is the length of the QAT stage (its schedule is stretched over E epochs).
Reports the quantized metric and its drop from FP per (row, E), and each run's validation
and training curves (TensorBoard logs of train.py). train.py keeps the best validation epoch, and its
validation data are the test images, so the table also gives the last epoch's value: the gap
between the two is what that selection adds. A run whose ``results.json`` already exists is reused.

  python benchmarks/qat_epochs.py --model repvgg_a0 --fp_checkpoint RUN/fp_model.keras \
      --bnest_fp_checkpoint BNEST_RUN/fp_model.keras --epochs 3 6 9 --seed 0

Writes benchmarks/results/qat_epochs_<model>.{json,md,png}.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)

from benchmarks.provenance import markdown_header, provenance, repo_relative  # noqa: E402
from benchmarks.qat_curves import epoch_values  # noqa: E402
from benchmarks.qat_results import ALL_ROWS, quantized_metric, slug  # noqa: E402
from repq.claims import tolerance  # noqa: E402
from repq.training.artifacts import atomic_write, write_json, write_text  # noqa: E402

QAT_ROWS = {label: flags for label, flags in ALL_ROWS if label != "FP"}
DEFAULT_ROWS = ("RepQ W4A4", "Merged LSQ W4A4", "RepQ-BNEst W4A4")


def run(model, label, epochs, args):
    """One ``train.py`` QAT run of row ``label`` for ``epochs`` QAT epochs -> a result dict."""
    flags = QAT_ROWS[label]
    checkpoint = args.bnest_fp_checkpoint if "--bnest" in flags else args.fp_checkpoint
    out = os.path.join(args.runs_dir, f"{model}_s{args.seed}_{slug(label)}_e{epochs}")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--model={model}", f"--seed={args.seed}",
           f"--output_dir={out}", f"--fp_checkpoint={checkpoint}", f"--epochs={epochs}", *flags,
           *([f"--limit={args.limit}"] if args.limit else [])]
    results_path = os.path.join(out, "results.json")
    if not os.path.isfile(results_path):
        subprocess.run(cmd, check=True, cwd=ROOT)
    with open(results_path) as f:
        result = json.load(f)
    logs = os.path.join(out, "tensorboard", "qat")
    scale = 100.0 if result["metric"] == "top1" else 1.0
    curve_tag = "epoch_accuracy" if result["metric"] == "top1" else "epoch_psnr"
    curve = lambda split: ([scale * v for v in epoch_values(os.path.join(logs, split), curve_tag)]  # noqa: E731
                           if os.path.isdir(os.path.join(logs, split)) else [])
    return dict(label=label, epochs=epochs, seed=args.seed, metric=result["metric"], fp=result["metrics"]["fp"],
                quantized=quantized_metric(result), qat_s=result["times"]["qat_s"],
                validation=curve("validation"), train=curve("train"),
                command=repo_relative(" ".join(["python train.py", *cmd[2:]])))


def unit(metric):
    return "pt" if metric == "top1" else "dB"


def curve_text(values):
    return ", ".join(f"{v:.1f}" for v in values)


def table(model, runs, info):
    unit_name = unit(runs[0]["metric"])
    lines = [markdown_header(info),
             f"{model}, seed {runs[0]['seed']}: every row starts from the same FP checkpoint; only the QAT "
             f"epochs differ. Drop: quantized - FP ({unit_name}); tolerance: the 4-bit claim "
             f"({tolerance(runs[0]['metric'], 4)} {unit_name}).", "",
             "| method | QAT epochs | FP | quantized (best epoch) | drop | last epoch | validation per QAT epoch "
             "| train per QAT epoch | QAT stage (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        last = f"{r['validation'][-1]:.2f}" if r["validation"] else "-"
        lines.append(f"| {r['label']} | {r['epochs']} | {r['fp']:.2f} | {r['quantized']:.2f} | "
                     f"{r['quantized'] - r['fp']:+.2f} | {last} | {curve_text(r['validation'])} | "
                     f"{curve_text(r['train'])} | {r['qat_s']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(model, runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, label in enumerate(dict.fromkeys(r["label"] for r in runs)):
        points = sorted((r["epochs"], r["quantized"] - r["fp"]) for r in runs if r["label"] == label)
        ax.plot(*zip(*points), marker="o", color=f"C{i}", label=label)
    ax.axhline(-tolerance(runs[0]["metric"], 4), color="gray", linestyle="--", linewidth=1, label="4-bit claim")
    ax.set_xlabel("QAT epochs")
    ax.set_ylabel(f"quantized - FP ({unit(runs[0]['metric'])})")
    ax.set_title(f"{model}: drop against QAT budget", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="repvgg_a0")
    parser.add_argument("--fp_checkpoint", required=True, help="FP model (train.py --method=fp) of the BN rows")
    parser.add_argument("--bnest_fp_checkpoint", help="FP model trained with --bnest, for the BNEst rows")
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 6, 9], help="QAT epoch counts")
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=sorted(QAT_ROWS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs_dir", default=os.path.join("runs", "qat_epochs"))
    parser.add_argument("--limit", type=int, default=None, help="train.py --limit (tests only)")
    parser.add_argument("--results_dir", default=RESULTS)
    args = parser.parse_args(argv)
    if any("--bnest" in QAT_ROWS[label] for label in args.rows) and not args.bnest_fp_checkpoint:
        parser.error("a BNEst row needs --bnest_fp_checkpoint (a train.py --method=fp --bnest run's fp_model.keras).")
    for path in (args.fp_checkpoint, args.bnest_fp_checkpoint):
        if path and not os.path.isfile(path):
            parser.error(f"checkpoint {path!r} does not exist; train it with train.py --method=fp first.")
    if min(args.epochs) < 1:
        parser.error("--epochs must all be >= 1.")
    return args


def main(argv=None):
    args = parse_args(argv)
    info = provenance(None if argv is None else [sys.argv[0], *argv])
    runs = [run(args.model, label, epochs, args) for label in args.rows for epochs in sorted(args.epochs)]
    text = table(args.model, runs, info)
    base = os.path.join(args.results_dir, f"qat_epochs_{args.model}")
    write_json(base + ".json", dict(provenance=info, model=args.model, runs=runs))
    write_text(base + ".md", text)
    plot(args.model, runs, base + ".png")
    print(text)
    return runs


if __name__ == "__main__":
    main()
