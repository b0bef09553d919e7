"""PTQ and QAT from the same FP checkpoint: every method at each bit width, one table and one plot.

PTQ rows run ``ptq.py`` (reconstruction on the reparametrized, i.e. merged, model; the number is the
deploy model's top-1, ``deploy_top1``); QAT rows run ``train.py --fp_checkpoint`` (the deploy
model's top-1). Every run is one seed; rows give mean +- std over ``--seeds``. Finished runs (a
results.json in their directory) are read, not rerun, so the command resumes.

  python benchmarks/ptq_vs_qat.py --model repvgg_a0 --fp_checkpoint runs/zoo_fp/repvgg_a0_s0/fp_model.keras \
      --bits 8 6 4 2/4 --ptq rtn brecq qdrop --qat repq merged_lsq --seeds 0 1 2

``--bits``: ``B`` (weights and activations B bits) or ``W/A`` (e.g. ``2/4``: W2A4).
Writes benchmarks/results/ptq_vs_qat_<model>.{json,md,png} (or ``--name``) after every run, with the commit
and the command, and ``<name>_loss_curves.png``: each reconstruction unit's training L_rec against its
optimisation step (the first seed of every PTQ method and bit width), to show whether the losses stopped
falling. The table under it gives the median over units of the last quarter's fall (see ``late_fall``).
Runs share ``--runs_dir``: a run of an earlier table (same model, method, bits, seed) is reused, and keeps the
commit it was made at (its run dir's ``run_commit.json``; the table's last line lists the runs' commits).
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.checks import missing_fp_checkpoint  # noqa: E402
from benchmarks.provenance import markdown_header, provenance, repo_relative, short_commit  # noqa: E402
from benchmarks.seed_stats import beyond_noise, sample_std  # noqa: E402
from repq.training.artifacts import atomic_write, write_json, write_text  # noqa: E402


def bit_widths(text):
    """``"4"`` -> (4, 4); ``"2/4"`` -> (2, 4): (weight bits, activation bits), each 2..8."""
    try:
        bits = tuple(int(part) for part in text.split("/"))
    except ValueError:
        bits = ()
    if len(bits) == 1:
        bits *= 2
    if len(bits) != 2 or not all(2 <= b <= 8 for b in bits):
        raise argparse.ArgumentTypeError(f"{text!r} is not a bit width: give B or W/A with 2..8 bits, e.g. 4 or 2/4")
    return bits


def label(bits):
    """(2, 4) -> ``"W2A4"``."""
    return f"W{bits[0]}A{bits[1]}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="repvgg_a0")
    parser.add_argument("--fp_checkpoint", required=True, help="the trained FP model (.keras) every run starts from")
    parser.add_argument("--bits", type=bit_widths, nargs="+", default=[(8, 8), (6, 6), (4, 4)],
                        help="B (weights = activations = B bits) or W/A, e.g. 2/4")
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


def run_dir(args, kind, method, bits, seed):
    return os.path.abspath(os.path.join(args.runs_dir, f"{args.model}_{kind}_{method}_{label(bits).lower()}_s{seed}"))


RUN_COMMIT = "run_commit.json"  # in a run dir: the commit of the process that made the run


def run_commit(out):
    """The commit a finished run in ``out`` was made at (``"abc1234"``, ``"abc1234+"`` with uncommitted
    changes), or None for a run made before run dirs recorded it."""
    path = os.path.join(out, RUN_COMMIT)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    return short_commit(record.get("commit"), record.get("dirty"))


def run_one(args, kind, method, bits, seed):
    """One ptq.py / train.py run at ``bits`` = (weight, activation) -> ``{"top1": deployed top-1 %,
    "fp": FP top-1 %, "unit_loss_curves": PTQ's per-unit curves (None for QAT), "commit": ``run_commit``, ...}``;
    a run made now records the commit of the tree it ran from (read just before it starts; a run that resumes an
    interrupted one, the commit it finished at) in its run dir, a finished run read back keeps its own.

    ``mrecg_loss`` reads its search losses from the same seed's finished QDrop run (``ptq.py
    --baseline_run``: that pass is MRECG's search pass) instead of repeating it."""
    w_bits, a_bits = bits
    out = run_dir(args, kind, method, bits, seed)
    common = [f"--model={args.model}", f"--fp_checkpoint={os.path.abspath(args.fp_checkpoint)}",
              f"--seed={seed}", f"--output_dir={out}"]
    if kind == "ptq":
        cmd = ["ptq.py", *common, f"--method={method}", f"--weight_bits={w_bits}", f"--act_bits={a_bits}",
               f"--iters={args.ptq_iters}", f"--calib_size={args.calib_size}"]
        qdrop = run_dir(args, "ptq", "qdrop", bits, seed)
        if method == "mrecg_loss" and os.path.exists(os.path.join(qdrop, "results.json")):
            cmd.append(f"--baseline_run={qdrop}")
    else:
        cmd = ["train.py", *common, f"--method={method}", f"--bits={w_bits}"] + [f"--act_bits={a_bits}"] * (a_bits != w_bits)
        cmd += [f"--epochs={args.qat_epochs}"] * (args.qat_epochs is not None) + [f"--limit={args.limit}"] * bool(args.limit)
    results_path = os.path.join(out, "results.json")
    start = time.time()
    if not os.path.exists(results_path):
        info = provenance()  # the tree the subprocess imports now (it may have moved since this process started)
        subprocess.run([sys.executable, os.path.join(ROOT, cmd[0]), *cmd[1:]], check=True, cwd=ROOT)
        write_json(os.path.join(out, RUN_COMMIT), dict(commit=info["commit"], dirty=info["dirty"]))
    with open(results_path) as f:
        result = json.load(f)
    curves = output_loss = above_rtn = None
    if kind == "ptq":
        top1, fp = result["deploy_top1"], result["fp_top1"]
        with open(os.path.join(out, "unit_losses.json")) as f:
            losses = json.load(f)
        curves = losses.get("unit_loss_curves")
        output_loss = losses["unit_losses"][-1] if losses.get("unit_losses") else None
        above_rtn = units_above_rtn(losses)
    else:
        top1, fp = result["metrics"]["deploy"], result["metrics"].get("fp")
    # the run's own time, also when it is reused: PTQ from observers to the last unit (no evaluation), QAT all
    run_s = result.get("ptq_time_s") if kind == "ptq" else result.get("times", {}).get("total_s")
    return dict(run_s=run_s, kind=kind, method=method, bits=label(bits), weight_bits=w_bits, act_bits=a_bits, seed=seed,
                top1=top1, fp=fp, wall_s=time.time() - start, command=repo_relative("python " + " ".join(cmd)),
                unit_loss_curves=curves, output_loss=output_loss, units_above_rtn=above_rtn, commit=run_commit(out))


def units_above_rtn(losses):
    """``[n, units]``: how many units end, after hard rounding, above the L_rec they started from
    (round-to-nearest weights); None without losses (RTN). Reconstruction should never do worse than
    its start: a unit above it lost more in hard rounding than it gained from learning α."""
    final, start = losses.get("unit_losses") or [], losses.get("unit_losses_init") or []
    if not final or len(final) != len(start):
        return None
    return [sum(f > s for f, s in zip(final, start)), len(final)]


def late_fall(curve):
    """Relative fall of a unit's training L_rec over the last quarter of its recorded steps:
    ``1 - mean(last quarter) / mean(third quarter)`` (0: flat, i.e. plateaued; 0.1: still 10 % lower)."""
    rec = curve["rec"]
    q = len(rec) // 4
    if q == 0:
        return float("nan")
    return float(1.0 - np.mean(rec[-q:]) / np.mean(rec[-2 * q:-q]))


def median_late_fall(run):
    """Median of :func:`late_fall` over a PTQ run's units (None: no curves, e.g. RTN or QAT)."""
    falls = [late_fall(c) for c in run.get("unit_loss_curves") or [] if c]
    return float(np.nanmedian(falls)) if falls else None


def summary(runs):
    """Rows ``(kind, method, bits label, mean, std, n, late_fall, output_loss, output_loss_std,
    units_above_rtn, units)`` over seeds, in run order (``late_fall``: median over seeds of
    :func:`median_late_fall`; ``output_loss``: mean L_rec of the last reconstruction unit, whose output is
    the logits, against the FP logits on the calibration images: a finer measure than top-1 on 1,000
    digits; ``units_above_rtn``: mean over seeds of :func:`units_above_rtn`; None for RTN and QAT;
    ``run_s``/``run_s_std``: each run's recorded time, None unless every run has one)."""
    groups = {}
    for r in runs:
        groups.setdefault((r["kind"], r["method"], r["bits"]), []).append(r)
    rows = []
    for (k, m, b), group in groups.items():
        top1 = [r["top1"] for r in group]
        falls = [f for f in (median_late_fall(r) for r in group) if f is not None]
        out = [r["output_loss"] for r in group if r.get("output_loss") is not None]
        above = [r["units_above_rtn"] for r in group if r.get("units_above_rtn") is not None]
        rows.append(dict(kind=k, method=m, bits=b, mean=float(np.mean(top1)),
                         std=sample_std(top1), n=len(top1),
                         late_fall=float(np.median(falls)) if falls else None,
                         output_loss=float(np.mean(out)) if out else None,
                         output_loss_std=sample_std(out) if len(out) > 1 else None,
                         units_above_rtn=float(np.mean([a[0] for a in above])) if above else None,
                         units=above[0][1] if above else None, **_mean_std(group, "run_s")))
    return rows


def _mean_std(runs, key):
    """``{key: mean, key_std: std}`` of ``runs``' values of ``key`` (None where a run has none)."""
    values = [r.get(key) for r in runs]
    if not values or None in values:
        return {key: None, f"{key}_std": None}
    return {key: float(np.mean(values)), f"{key}_std": sample_std(values)}


def markdown(args, runs, rows, info):
    fp = [r["fp"] for r in sorted(runs, key=lambda r: r["kind"] != "ptq") if r["fp"] is not None][:1]
    lines = [markdown_header(info),
             f"{args.model} from `{args.fp_checkpoint}` (FP top-1 {fp[0] if fp else float('nan'):.2f} %); PTQ: ptq.py, "
             f"{args.ptq_iters} iterations/unit, {args.calib_size} calibration images, deploy model's top-1; "
             f"QAT: train.py from the same checkpoint, deploy model's top-1. Mean ± std over seeds "
             f"{', '.join(str(s) for s in args.seeds)} (n per row).", ""]
    header = ["| method | " + " | ".join(label(b) for b in args.bits) + " |", "|---|" + "---|" * len(args.bits)]
    lines += header
    falls = ["", "Plateau check: median over units (and seeds) of the fall of each unit's training L_rec "
             "over the last quarter of its iterations (`late_fall`: 0 = flat; curves in `*_loss_curves.png`).", "",
             *header]
    outputs = ["", "Output error: L_rec of the last unit (the logits against the FP model's, calibration images, "
               "after reconstruction), mean ± std over seeds.", "", *header]
    times = ["", "Time per run (s), mean ± std over seeds, as each run recorded it (so also for runs read back "
             "from --runs_dir): PTQ from the observers to the last unit, without evaluation (mrecg_loss with a "
             "QDrop run to read its search losses from: the final pass only); QAT the whole train.py run.", "",
             *header]
    above = ["", "Units that end above their round-to-nearest L_rec after hard rounding (mean over seeds, of the "
             "run's units): the soft rounding had not settled, so hard rounding lost more than learning gained.",
             "", *header]
    for kind, method in [("ptq", m) for m in args.ptq] + [("qat", m) for m in args.qat]:
        cells, fall_cells, output_cells, above_cells, time_cells = [], [], [], [], []
        for bits in args.bits:
            row = next((r for r in rows if (r["kind"], r["method"], r["bits"]) == (kind, method, label(bits))), None)
            cells.append("-" if row is None else f"{row['mean']:.2f} ± {row['std']:.2f} (n={row['n']})")
            fall_cells.append("-" if row is None or row["late_fall"] is None else f"{100 * row['late_fall']:+.1f} %")
            output_cells.append("-" if row is None or row["output_loss"] is None else
                                f"{row['output_loss']:.3g}" + (f" ± {row['output_loss_std']:.2g}"
                                                              if row["output_loss_std"] is not None else ""))
            above_cells.append("-" if row is None or row["units_above_rtn"] is None else
                               f"{row['units_above_rtn']:.3g} of {row['units']}")
            time_cells.append("-" if row is None or row.get("run_s") is None else
                              f"{row['run_s']:.0f} ± {row['run_s_std']:.0f}")
        lines.append(f"| {kind.upper()} {method} | " + " | ".join(cells) + " |")
        times.append(f"| {kind.upper()} {method} | " + " | ".join(time_cells) + " |")
        if kind == "ptq" and method != "rtn":
            falls.append(f"| {method} | " + " | ".join(fall_cells) + " |")
            outputs.append(f"| {method} | " + " | ".join(output_cells) + " |")
            above.append(f"| {method} | " + " | ".join(above_cells) + " |")
    reconstructed = any(m != "rtn" for m in args.ptq)
    order = ["", "The seed's ordering (MRECG ≥ QDrop ≥ BRECQ ≥ AdaRound ≥ RTN; each MRECG variant against the best "
             "other method run, then adjacent pairs): "
             "holds on the mean, and whether the difference exceeds twice its standard error over seeds "
             "(beyond noise); top-1, and output error (lower is better).", "",
             "| bits | pair | top-1 holds | beyond noise | output error holds | beyond noise |", "|---|---|---|---|---|---|"]
    from benchmarks.qat_results import dash

    for c in ordering(args, runs):
        order.append(f"| {c['bits']} | {c['pair']} | {c['top1_holds']} | {c['top1_beyond_noise']} | "
                     f"{dash(c['output_holds'])} | {dash(c['output_beyond_noise'])} |")
    return "\n".join(lines + (falls + outputs + above if reconstructed else []) + times
                     + (order if len(order) > 5 else []) + ["", runs_commits(runs)]) + "\n"


def runs_commits(runs):
    """One line: the commits the runs were made at, with how many runs each (``+``: uncommitted changes)."""
    counts = collections.Counter(run.get("commit") or "unrecorded" for run in runs)
    parts = [f"{commit} ({n} run{'s' * (n != 1)})" for commit, n in sorted(counts.items())]
    note = " ('unrecorded': made before run dirs recorded their commit)" if "unrecorded" in counts else ""
    return "Runs made at: " + ", ".join(parts) + f" (`+`: with uncommitted changes){note}."


# the seed's order below MRECG, best first (SPEC Part C §7); each MRECG variant is compared with the best of these
SEED_ORDER = ["qdrop", "brecq", "adaround", "rtn"]
MRECG = ["mrecg_loss", "mrecg_modcap"]


def ordering(args, runs):
    """Pairs (better, worse) of the seed's order among ``args.ptq`` (each MRECG variant against the best
    other method run, then adjacent pairs of :data:`SEED_ORDER`), per bit width: whether the
    better method's mean top-1 is >= (and its mean output error <=) the other's, and whether beyond noise
    (:func:`benchmarks.seed_stats.beyond_noise`: the difference exceeds twice its standard error)."""
    chain = [m for m in SEED_ORDER if m in args.ptq]
    pairs = [(m, chain[0]) for m in MRECG if m in args.ptq and chain] + list(zip(chain, chain[1:]))
    out = []
    for bits in map(label, args.bits):
        def values(method, key):
            return [r[key] for r in runs if (r["kind"], r["method"], r["bits"]) == ("ptq", method, bits)
                    and r.get(key) is not None]

        for better, worse in pairs:
            a, b = values(better, "top1"), values(worse, "top1")
            if not a or not b:
                continue
            ea, eb = values(better, "output_loss"), values(worse, "output_loss")
            both = bool(ea and eb)
            out.append(dict(bits=bits, pair=f"{better} ≥ {worse}", top1_holds=bool(np.mean(a) >= np.mean(b)),
                            top1_beyond_noise=beyond_noise(a, b),
                            output_holds=bool(np.mean(ea) <= np.mean(eb)) if both else None,
                            output_beyond_noise=beyond_noise(ea, eb) if both else None))
    return out


def plot(args, rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label(b) for b in args.bits]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for kind, method in sorted({(r["kind"], r["method"]) for r in rows}):
        mine = sorted((r for r in rows if (r["kind"], r["method"]) == (kind, method)), key=lambda r: labels.index(r["bits"]))
        ax.errorbar([labels.index(r["bits"]) for r in mine], [r["mean"] for r in mine], yerr=[r["std"] for r in mine],
                    marker="o", capsize=3, linestyle="--" if kind == "ptq" else "-", label=f"{kind.upper()} {method}")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("bit width")
    ax.set_ylabel("top-1 % (deployed)")
    ax.set_title(args.model)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def plot_curves(args, runs, path):
    """Per-unit training L_rec (relative to its first recorded value) against the step: one panel per
    PTQ method (columns) and bit width (rows), the first seed's run; written atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    methods = [m for m in args.ptq if any(r["method"] == m and r["unit_loss_curves"] for r in runs)]
    if not methods:
        return
    fig, axes = plt.subplots(len(args.bits), len(methods), figsize=(2.6 * len(methods), 2.2 * len(args.bits)),
                             squeeze=False, sharex=True)
    for i, bits in enumerate(args.bits):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            run = next((r for r in runs if r["kind"] == "ptq" and r["method"] == method and r["bits"] == label(bits)
                        and r["unit_loss_curves"]), None)
            for k, curve in enumerate(run["unit_loss_curves"] if run else []):
                if curve and curve["rec"][0] > 0:
                    ax.plot(curve["step"], [v / curve["rec"][0] for v in curve["rec"]], lw=0.8,
                            color=plt.cm.viridis(k / max(1, len(run["unit_loss_curves"]) - 1)))
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{method} {label(bits)}" + (f" s{run['seed']}" if run else " (not run)"), fontsize=8)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    for row in axes:
        row[0].set_ylabel("L_rec / first", fontsize=8)
    fig.suptitle(f"{args.model}: training L_rec per unit\n(colour: unit, dark = first)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    missing = missing_fp_checkpoint(args.fp_checkpoint, args.model)
    if missing:
        sys.exit(f"ptq_vs_qat.py: error: {missing}")
    info = provenance()
    base = os.path.join(args.results_dir, args.name or f"ptq_vs_qat_{args.model}")
    runs = []
    for bits in args.bits:
        for seed in args.seeds:
            for kind, method in [("ptq", m) for m in args.ptq] + [("qat", m) for m in args.qat]:
                runs.append(run_one(args, kind, method, bits, seed))
                rows = summary(runs)
                write_json(base + ".json", dict(provenance=info, args=repo_relative(vars(args)), runs=runs, rows=rows,
                                                ordering=ordering(args, runs)))
                write_text(base + ".md", markdown(args, runs, rows, info))
    plot(args, summary(runs), base + ".png")
    plot_curves(args, runs, base + "_loss_curves.png")
    print(markdown(args, runs, summary(runs), info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
