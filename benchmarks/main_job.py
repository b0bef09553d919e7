"""The README's main job, timed: ``python train.py --model repvgg_a0 --bits 4 --bnest`` in a fresh run dir.

Checks the bars the main job must meet: FP >= 98.0 % top-1, 4-bit RepQ-BNEst within 1.0 pt of its FP,
QAT == deploy == integer metrics, and at most 15 minutes of wall time.

  python benchmarks/main_job.py [--runs_dir runs/main_job]

Writes benchmarks/results/main_job.{json,md} with the commit and the command.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)

from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from repq.outputs import read_marker  # noqa: E402
from repq.training.artifacts import write_json, write_text  # noqa: E402

COMMAND = ["train.py", "--model", "repvgg_a0", "--bits", "4", "--bnest"]
BARS = dict(fp_min=98.0, max_drop=1.0, max_wall_s=15 * 60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs_dir", default=os.path.join("runs", "main_job"))
    args = parser.parse_args()
    info = provenance()
    out = os.path.abspath(args.runs_dir)
    if os.path.isdir(out) and read_marker(out) == "train":  # a fresh run: only ever replaces a train.py run dir
        shutil.rmtree(out)
    start = time.time()
    subprocess.run([sys.executable, *COMMAND, f"--output_dir={out}"], check=True, cwd=ROOT)
    wall = time.time() - start
    with open(os.path.join(out, "results.json")) as f:
        result = json.load(f)
    m = result["metrics"]
    checks = {"FP >= 98.0 %": m["fp"] >= BARS["fp_min"],
              "4-bit within 1.0 pt of FP": m["qat"] >= m["fp"] - BARS["max_drop"],
              "QAT == deploy == integer": m["qat"] == m["deploy"] == m.get("integer"),
              "wall <= 15 min": wall <= BARS["max_wall_s"]}
    report = dict(provenance=info, readme_command="python " + " ".join(COMMAND), metrics=m, wall_s=wall,
                  times=result["times"], cpus=os.cpu_count(), checks=checks, verdict=result.get("verdict"))
    lines = [markdown_header(info), f"Main job: `{report['readme_command']}` on {os.cpu_count()} CPUs, "
             f"wall {wall / 60:.1f} min (FP {result['times']['fp_s']:.0f} s, QAT + evaluation {result['times']['qat_s']:.0f} s).",
             "", "| FP | QAT | deploy | integer |", "|---|---|---|---|",
             f"| {m['fp']:.2f} | {m['qat']:.2f} | {m['deploy']:.2f} | {m.get('integer', float('nan')):.2f} |", "",
             "| check | holds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in checks.items()] + ["", str(result.get("verdict"))]
    write_json(os.path.join(RESULTS, "main_job.json"), report)
    write_text(os.path.join(RESULTS, "main_job.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
