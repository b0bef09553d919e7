"""The RepQ results table on the embedded data (mnist5k, skimage_sr) with the embedded recipes.

Runs ``train.py`` once per configuration (FP models are trained once and shared through
``--fp_checkpoint``; RepQ-BNEst trains its own BNEst FP model) and collects every
``results.json`` into ``benchmarks/results/qat_results.{json,md}``.

  python benchmarks/qat_results.py [--runs_dir runs/qat_results] [--tfmot8]
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

from repq.training.artifacts import write_json, write_text  # noqa: E402

# (model, label, train.py flags); "fp" rows produce the checkpoint the next rows load.
CONFIGS = {
    "repvgg_a0": [("FP", ["--method=fp"]),
                  ("RepQ W8A8", ["--method=repq", "--bits=8"]),
                  ("RepQ W4A4", ["--method=repq", "--bits=4"]),
                  ("Merged LSQ W4A4", ["--method=merged_lsq", "--bits=4"]),
                  ("RepQ-BNEst W4A4", ["--method=repq", "--bits=4", "--bnest"])],
    "ecbsr_m4c16_x2": [("FP", ["--method=fp"]),
                       ("RepQ W8A8", ["--method=repq", "--bits=8"]),
                       ("RepQ W4A4", ["--method=repq", "--bits=4"]),
                       ("Merged LSQ W4A4", ["--method=merged_lsq", "--bits=4"])],
}
TFMOT8 = ("Merged 8-bit (tfmot) W8A8", ["--method=tfmot8", "--bits=8"])


def run(model, label, flags, runs_dir):
    name = label.lower().replace(" ", "_").replace("(", "").replace(")", "")
    out = os.path.join(runs_dir, f"{model}_{name}")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--model={model}", f"--output_dir={out}", *flags]
    if "--method=fp" not in flags and "--bnest" not in flags:
        cmd.append(f"--fp_checkpoint={os.path.join(runs_dir, f'{model}_fp', 'fp_model.keras')}")
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    with open(os.path.join(out, "results.json")) as f:
        result = json.load(f)
    result["wall_s"] = time.time() - start
    result["command"] = " ".join(["python train.py", *cmd[2:]]).replace(ROOT + os.sep, "")  # repo-relative
    return result


def load_rows():
    """Rows of an earlier run (other models keep their results when one model is rerun)."""
    path = os.path.join(RESULTS, "qat_results.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def markdown(rows):
    lines = ["| model | method | metric | FP | QAT | deploy | deploy == QAT | wall (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        m = row["metrics"]
        q = m.get("qat", m.get("tfmot8"))
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {row['model']} | {row['label']} | {row['metric']} | {fmt(m['fp'])} | {fmt(q)} | "
                     f"{fmt(m.get('deploy'))} | {row.get('deploy_matches_qat', '-')} | {row['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", default=os.path.join("runs", "qat_results"))
    parser.add_argument("--models", nargs="*", default=list(CONFIGS))
    parser.add_argument("--tfmot8", action="store_true", help="also run the tfmot 8-bit baseline")
    args = parser.parse_args()
    rows = load_rows()
    for model in args.models:
        configs = CONFIGS[model] + ([TFMOT8] if args.tfmot8 else [])
        for label, flags in configs:
            result = run(model, label, flags, os.path.abspath(args.runs_dir))
            result["label"] = label
            rows = [r for r in rows if (r["model"], r["label"]) != (model, label)] + [result]
            write_json(os.path.join(RESULTS, "qat_results.json"), rows)
            write_text(os.path.join(RESULTS, "qat_results.md"), markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
