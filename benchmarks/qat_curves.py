"""Training curves of the runs behind the QAT results table (``benchmarks/qat_results.py``).

Reads the TensorBoard logs train.py wrote in each run (``<runs_dir>/<model>_s<seed>_<row>/
tensorboard/<stage>``): train and validation top-1 after every epoch, per row and seed. For the QAT
stage (default) it shows where each method starts after quantizing the trained FP model and whether it
had stopped improving (e.g. merged LSQ: does it collapse, or still climb when QAT ends?); ``--stage fp``
shows the FP training of the rows that trained their own FP model (FP, the BNEst rows).

  python benchmarks/qat_curves.py [--runs_dir runs/qat_results] [--stage qat|fp] [--models M ...] \
      [--labels ROW ...] [--name qat_curves]

Writes benchmarks/results/<name>.{json,md,png} (runs whose logs are not in --runs_dir are left
out); the commits of the runs are taken from benchmarks/results/qat_results.json.
"""

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)

from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from benchmarks.qat_results import slug  # noqa: E402
from repq.training.artifacts import atomic_write, write_json, write_text  # noqa: E402


def epoch_values(log_dir, tag="epoch_accuracy"):
    """Per-epoch values of ``tag`` in the TensorBoard event files of ``log_dir`` (Keras' callback)."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})  # 0: every epoch (default: 10)
    events.Reload()
    if tag in events.Tags().get("scalars", []):
        return [float(e.value) for e in events.Scalars(tag)]
    if tag in events.Tags().get("tensors", []):
        return [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
    return []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", default=os.path.join("runs", "qat_results"))
    parser.add_argument("--labels", nargs="+", default=None, metavar="ROW", help="only these rows of the table")
    parser.add_argument("--models", nargs="+", default=None, help="only these models of the table")
    parser.add_argument("--stage", choices=("qat", "fp"), default="qat",
                        help="which training stage's curves (fp: only runs that trained their own FP model)")
    parser.add_argument("--name", default="qat_curves", help="artifact base name in benchmarks/results")
    args = parser.parse_args(argv)
    info = provenance(None if argv is None else [sys.argv[0], *argv])
    with open(os.path.join(RESULTS, "qat_results.json")) as f:
        table = json.load(f)
    rows, commits = [], set()
    for run in table["runs"]:
        out = os.path.join(args.runs_dir, f"{run['model']}_s{run['seed']}_{slug(run['label'])}")
        logs = os.path.join(out, "tensorboard", args.stage)
        if ((args.stage == "qat" and run["label"] == "FP") or (args.labels and run["label"] not in args.labels)
                or (args.models and run["model"] not in args.models)
                or not glob.glob(os.path.join(logs, "validation", "events*"))):
            continue
        rows.append(dict(model=run["model"], label=run["label"], seed=run["seed"],
                         train=[100 * v for v in epoch_values(os.path.join(logs, "train"))],
                         validation=[100 * v for v in epoch_values(os.path.join(logs, "validation"))],
                         fp=run["metrics"]["fp"]))
        commits.add(run["commit"][:7] + ("+" if run.get("dirty") else ""))
    if not rows:
        sys.exit(f"qat_curves.py: error: no {args.stage.upper()} logs of the table's runs"
                 f"{' for ' + str(args.labels) if args.labels else ''} in {args.runs_dir}; pass the --runs_dir of "
                 "qat_results.py.")
    runs_commit = sorted(commits)
    lines = [markdown_header(info), f"Runs of `benchmarks/qat_results.py` at commit {', '.join(runs_commit)} "
             f"({args.runs_dir}). Top-1 % after each {args.stage.upper()} epoch; FP: the checkpoint QAT started from "
             "(with the recipe's select_best: the weights of the best validation epoch of FP training).", "",
             "| model | method | seed | FP | train top-1 per epoch | validation top-1 per epoch |", "|---|---|---|---|---|---|"]
    fmt = lambda values: ", ".join(f"{v:.1f}" for v in values)  # noqa: E731
    lines += [f"| {r['model']} | {r['label']} | {r['seed']} | {r['fp']:.2f} | {fmt(r['train'])} | {fmt(r['validation'])} |"
              for r in rows]
    base = os.path.join(RESULTS, args.name)
    write_json(base + ".json", dict(provenance=info, runs_commit=runs_commit, rows=rows))
    write_text(base + ".md", "\n".join(lines) + "\n")
    plot(rows, base + ".png", args.stage)
    print("\n".join(lines))


def plot(rows, path, stage="qat"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({r["label"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, label in enumerate(labels):
        for j, r in enumerate(x for x in rows if x["label"] == label):
            ax.plot(range(1, len(r["validation"]) + 1), r["validation"], color=f"C{i}", marker="o",
                    label=label if j == 0 else None)
    ax.set_xlabel(f"{stage.upper()} epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
