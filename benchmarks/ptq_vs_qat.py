"""PTQ and QAT from the same FP checkpoint: every method at each bit width, one table and one plot.

PTQ rows run ``ptq.py`` (reconstruction on the reparametrized, i.e. merged, model; the number is the
deploy model's top-1, ``deploy_top1``); QAT rows run ``train.py --fp_checkpoint`` (the deploy
model's top-1). Every run is one seed; rows give mean +- std over ``--seeds``. Finished runs (a
results.json in their directory) are read, not rerun, so the command resumes.

  python benchmarks/ptq_vs_qat.py --model repvgg_a0 --fp_checkpoint runs/zoo_fp/repvgg_a0_s0/fp_model.keras \
      --bits 8 6 4 --ptq rtn brecq qdrop --qat repq merged_lsq --seeds 0 1 2

Writes benchmarks/results/ptq_vs_qat_<model>.{json,md,png} (or ``--name``) after every run, with the commit
and the command. Runs share ``--runs_dir``: a run of an earlier table (same model, method, bits, seed) is reused.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from repq.training.artifacts import atomic_write, write_json, write_text  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="repvgg_a0")
    parser.add_argument("--fp_checkpoint", required=True, help="the trained FP model (.keras) every run starts from")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4], help="weight = activation bits")
    parser.add_argument("--ptq", nargs="*", default=["rtn", "brecq", "qdrop"], help="ptq.py methods")
    parser.add_argument("--qat", nargs="*", default=["repq", "merged_lsq"], help="train.py methods")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ptq_iters", type=int, default=100, help="ptq.py --iters")
    parser.add_argument("--calib_size", type=int, default=256, help="ptq.py --calib_size")
    parser.add_argument("--qat_epochs", type=int, default=None, help="train.py --epochs (default: the recipe's)")
    parser.add_argument("--limit", type=int, default=None, help="train.py --limit (smoke tests)")
    parser.add_argument("--runs_dir", default=os.path.join("runs", "ptq_vs_qat"))
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--name", default=None, help="artifact name in --results_dir (default: ptq_vs_qat_<model>)")
    return parser.parse_args(argv)


def run_one(args, kind, method, bits, seed):
    """One ptq.py / train.py run -> ``{"top1": deployed top-1 %, "fp": FP top-1 %, ...}``."""
    out = os.path.abspath(os.path.join(args.runs_dir, f"{args.model}_{kind}_{method}_w{bits}a{bits}_s{seed}"))
    common = [f"--model={args.model}", f"--fp_checkpoint={os.path.abspath(args.fp_checkpoint)}",
              f"--seed={seed}", f"--output_dir={out}"]
    if kind == "ptq":
        cmd = ["ptq.py", *common, f"--method={method}", f"--weight_bits={bits}", f"--act_bits={bits}",
               f"--iters={args.ptq_iters}", f"--calib_size={args.calib_size}"]
    else:
        cmd = ["train.py", *common, f"--method={method}", f"--bits={bits}"]
        cmd += [f"--epochs={args.qat_epochs}"] * (args.qat_epochs is not None) + [f"--limit={args.limit}"] * bool(args.limit)
    results_path = os.path.join(out, "results.json")
    start = time.time()
    if not os.path.exists(results_path):
        subprocess.run([sys.executable, os.path.join(ROOT, cmd[0]), *cmd[1:]], check=True, cwd=ROOT)
    with open(results_path) as f:
        result = json.load(f)
    if kind == "ptq":
        top1, fp = result["deploy_top1"], result["fp_top1"]
    else:
        top1, fp = result["metrics"]["deploy"], result["metrics"].get("fp")
    return dict(kind=kind, method=method, bits=bits, seed=seed, top1=top1, fp=fp, wall_s=time.time() - start,
                command="python " + " ".join(cmd))


def summary(runs):
    """Rows ``(kind, method, bits, mean, std, n)`` over seeds, in run order."""
    groups = {}
    for r in runs:
        groups.setdefault((r["kind"], r["method"], r["bits"]), []).append(r["top1"])
    return [dict(kind=k, method=m, bits=b, mean=float(np.mean(v)), std=float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                 n=len(v)) for (k, m, b), v in groups.items()]


def markdown(args, runs, rows, info):
    fp = [r["fp"] for r in sorted(runs, key=lambda r: r["kind"] != "ptq") if r["fp"] is not None][:1]
    lines = [markdown_header(info),
             f"{args.model} from `{args.fp_checkpoint}` (FP top-1 {fp[0] if fp else float('nan'):.2f} %); PTQ: ptq.py, "
             f"{args.ptq_iters} iterations/unit, {args.calib_size} calibration images, deploy model's top-1; "
             f"QAT: train.py from the same checkpoint, deploy model's top-1. Mean ± std over seeds "
             f"{', '.join(str(s) for s in args.seeds)} (n per row).", "",
             "| method | " + " | ".join(f"W{b}A{b}" for b in args.bits) + " |",
             "|---|" + "---|" * len(args.bits)]
    for kind, method in [("ptq", m) for m in args.ptq] + [("qat", m) for m in args.qat]:
        cells = []
        for bits in args.bits:
            row = next((r for r in rows if (r["kind"], r["method"], r["bits"]) == (kind, method, bits)), None)
            cells.append("-" if row is None else f"{row['mean']:.2f} ± {row['std']:.2f} (n={row['n']})")
        lines.append(f"| {kind.upper()} {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(args, rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for kind, method in sorted({(r["kind"], r["method"]) for r in rows}):
        mine = sorted((r for r in rows if (r["kind"], r["method"]) == (kind, method)), key=lambda r: r["bits"])
        ax.errorbar([r["bits"] for r in mine], [r["mean"] for r in mine], yerr=[r["std"] for r in mine],
                    marker="o", capsize=3, linestyle="--" if kind == "ptq" else "-", label=f"{kind.upper()} {method}")
    ax.set_xlabel("bits (weights = activations)")
    ax.set_ylabel("top-1 % (deployed)")
    ax.set_title(args.model)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.fp_checkpoint):
        sys.exit(f"ptq_vs_qat.py: error: --fp_checkpoint {args.fp_checkpoint!r} does not exist; train one with "
                 f"`python train.py --model {args.model} --method fp`.")
    info = provenance()
    base = os.path.join(args.results_dir, args.name or f"ptq_vs_qat_{args.model}")
    runs = []
    for bits in args.bits:
        for seed in args.seeds:
            for kind, method in [("ptq", m) for m in args.ptq] + [("qat", m) for m in args.qat]:
                runs.append(run_one(args, kind, method, bits, seed))
                rows = summary(runs)
                write_json(base + ".json", dict(provenance=info, args=vars(args), runs=runs, rows=rows))
                write_text(base + ".md", markdown(args, runs, rows, info))
    plot(args, summary(runs), base + ".png")
    print(markdown(args, runs, summary(runs), info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
