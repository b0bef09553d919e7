"""FP baselines of the zoo with their embedded recipes: is every model converged?

Runs ``train.py --method=fp`` for each zoo classifier on mnist5k (plus its BNEst variant where
``--bnest`` applies) and for ECBSR x2 on skimage_sr, and checks the bars results are compared
against: FP top-1 >= 98.5 % on mnist5k; ECBSR at least 1.0 dB above bicubic on the same images.

  python benchmarks/zoo_fp.py [--models repvgg_a0 ...] [--seed 0] [--no_bnest | --only_bnest]

Writes benchmarks/results/zoo_fp.{json,md} (rows of other models are kept), with the commit and
the command.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)

from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from repq.training.artifacts import write_json, write_text  # noqa: E402

TOP1_BAR, BICUBIC_GAIN_BAR = 98.5, 1.0
# (model, train.py flags)
RUNS = [("repvgg_a0", []), ("repvgg_a0", ["--bnest"]), ("repvgg_b0", []), ("repvgg_b0", ["--bnest"]),
        ("ac_resnet18", []), ("ac_resnet18", ["--bnest"]), ("orepa_resnet18", []), ("orepa_resnet18", ["--bnest"]),
        ("resnet18", []), ("resnet18", ["--bnest"]), ("mobilenetv2", []), ("mobilenetv2", ["--bnest"]),
        ("ecbsr_m4c16_x2", [])]


def run(model, flags, seed, runs_dir):
    out = os.path.join(runs_dir, f"{model}{'_bnest' if flags else ''}_s{seed}")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--model={model}", "--method=fp", f"--seed={seed}",
           f"--output_dir={out}", *flags]
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    with open(os.path.join(out, "results.json")) as f:
        result = json.load(f)
    metrics = result["metrics"]
    row = dict(model=model, bnest=bool(flags), seed=seed, metric=result["metric"], fp=metrics["fp"],
               layout=result["recipe"].get("stem"), fp_epochs=result["recipe"]["fp_epochs"],
               wall_s=time.time() - start, command=" ".join(["python train.py", *cmd[2:]]).replace(ROOT + os.sep, ""))
    if "bicubic" in metrics:
        row["bicubic"] = metrics["bicubic"]
    row["converged"] = converged(metrics["fp"], metrics.get("bicubic"))
    return row


def converged(fp, bicubic=None):
    """Whether an FP result passes the bar: PSNR ``fp`` >= ``bicubic`` + BICUBIC_GAIN_BAR dB where a bicubic
    PSNR is given (SR), else top-1 ``fp`` >= TOP1_BAR %."""
    return fp - bicubic >= BICUBIC_GAIN_BAR if bicubic is not None else fp >= TOP1_BAR


def markdown(rows, info):
    lines = [markdown_header(info), f"Bars: top-1 >= {TOP1_BAR} % (mnist5k); PSNR >= bicubic + {BICUBIC_GAIN_BAR} dB "
             "(skimage_sr).", "", "| model | norm | layout | FP epochs | seed | metric | FP | bicubic | converged | wall (s) | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sr = r["metric"] == "psnr"  # ECBSR: no BatchNorm, no stride layout
        norm, layout = ("-", "-") if sr else ("BNEst" if r["bnest"] else "BN", r["layout"])
        lines.append(f"| {r['model']} | {norm} | {layout} | {r['fp_epochs']} | {r['seed']} | "
                     f"{r['metric']} | {r['fp']:.2f} | {r.get('bicubic', float('nan')):.2f} | {r['converged']} | "
                     f"{r['wall_s']:.0f} | {r['commit'][:7]}{'+' if r['dirty'] else ''} |")
    return "\n".join(lines).replace("| nan |", "| - |") + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", default=os.path.join("runs", "zoo_fp"))
    parser.add_argument("--models", nargs="*", default=list(dict.fromkeys(m for m, _ in RUNS)),
                        help="run in this order")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_bnest", action="store_true", help="skip the BNEst variants")
    parser.add_argument("--only_bnest", action="store_true", help="run only the BNEst variants")
    args = parser.parse_args()
    path = os.path.join(RESULTS, "zoo_fp.json")
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            rows = json.load(f)["rows"]
    info = provenance()
    runs = [(model, flags) for wanted in args.models for model, flags in RUNS if model == wanted]  # in --models order
    for model, flags in runs:
        if not (flags and args.no_bnest) and not (args.only_bnest and not flags):
            row = run(model, flags, args.seed, os.path.abspath(args.runs_dir))
            row.update(commit=info["commit"], dirty=info["dirty"])
            rows = [r for r in rows if (r["model"], r["bnest"], r["seed"]) != (model, row["bnest"], args.seed)] + [row]
            write_json(path, dict(provenance=info, rows=rows))
            write_text(os.path.join(RESULTS, "zoo_fp.md"), markdown(rows, info))
    print(markdown(rows, info))


if __name__ == "__main__":
    main()
