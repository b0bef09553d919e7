"""The tfmot 8-bit baseline with tfmot's initial activation ranges against calibrated ones.

tfmot starts every activation range at [-6, 6] and moves it by an EMA (decay 0.999);
``repq.baselines.tfmot8`` first sets the ranges from a few training batches
(``--range_calibration_batches``, default 8). For one trained FP model this runs the baseline
both ways, with the recipe's flags (train.py's ``tfmot8_command``), and reports the metric of the
quantized model as QAT starts and after it:

  python benchmarks/tfmot_ranges.py --model ecbsr_m4c16_x2 \
      --fp_checkpoint runs/qat_results/ecbsr_m4c16_x2_s0_fp/fp_model.keras

Writes benchmarks/results/tfmot_ranges_<model>.{json,md,png} with the commit and the command.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)

from benchmarks.checks import missing_fp_checkpoint  # noqa: E402
from benchmarks.provenance import markdown_header, provenance, repo_relative  # noqa: E402

SETTINGS = (("tfmot's start, [-6, 6]", 0), ("calibrated on 8 batches", 8))


def run_baseline(model_name, fp_checkpoint, calibration_batches, seed, workdir):
    """``repq.baselines.tfmot8`` on the merged ``fp_checkpoint`` -> its result dict."""
    import keras

    import repq
    from repq.cli import train
    from repq.graph import flatten_model
    from repq.training import save_model

    recipe = train.with_model_scale(train.recipe_module(model_name).get_config(), model_name)
    merged = os.path.join(workdir, "merged_fp_model.keras")
    if not os.path.exists(merged):
        save_model(flatten_model(repq.reparametrize(keras.saving.load_model(fp_checkpoint, compile=False))), merged)
    out = os.path.join(workdir, f"tfmot8_{calibration_batches}.json")
    cmd = train.tfmot8_command(recipe, merged, out, seed) + [f"--range_calibration_batches={calibration_batches}"]
    subprocess.run(cmd, check=True, cwd=ROOT, env=train.child_env())
    with open(out) as f:
        return json.load(f)


def markdown(info, args, rows, metric):
    unit = "top-1 (%)" if metric == "top1" else "PSNR-Y (dB)"
    lines = [markdown_header(info), f"{args.model} from `{args.fp_checkpoint}`, seed {args.seed}; FP {rows[0]['fp']:.2f}.",
             "", f"| activation ranges | {unit} as QAT starts | after QAT |", "|---|---|---|"]
    lines += [f"| {r['setting']} | {r['before_qat']:.2f} | {r['after_qat']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows, metric, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["before_qat"] for r in rows], 0.4, label="as QAT starts")
    ax.bar([i + 0.2 for i in x], [r["after_qat"] for r in rows], 0.4, label="after QAT")
    ax.axhline(rows[0]["fp"], color="k", ls="--", lw=1, label="FP")
    ax.set_xticks(list(x), [r["setting"] for r in rows])
    ax.set_ylabel(metric)
    values = [r[k] for r in rows for k in ("before_qat", "after_qat", "fp")]
    ax.set_ylim(min(values) - 1, max(values) + 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ecbsr_m4c16_x2")
    parser.add_argument("--fp_checkpoint", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results_dir", default=RESULTS)
    args = parser.parse_args(argv)
    missing = missing_fp_checkpoint(args.fp_checkpoint, args.model)
    if missing:
        sys.exit(f"tfmot_ranges.py: error: {missing}")
    from repq.training.artifacts import write_json, write_text

    info = provenance(argv and [sys.argv[0], *argv])
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for setting, batches in SETTINGS:
            result = run_baseline(args.model, args.fp_checkpoint, batches, args.seed, workdir)
            metric = next(k for k in result if not k.endswith(("_before_qat", "_float")))
            rows.append(dict(setting=setting, calibration_batches=batches, fp=result[f"{metric}_float"],
                             before_qat=result[f"{metric}_before_qat"], after_qat=result[metric]))
    base = os.path.join(args.results_dir, f"tfmot_ranges_{args.model}")
    write_json(base + ".json", dict(provenance=info, args=repo_relative(vars(args)), metric=metric, rows=rows))
    write_text(base + ".md", markdown(info, args, rows, metric))
    plot(rows, metric, base + ".png")
    print(markdown(info, args, rows, metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
