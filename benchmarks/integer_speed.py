"""``repq.integer_predict`` against the LiteRT interpreter on the same int8 model, side by side.

The main job's model: RepVGG-A0 (``half`` layout, 32x32x3, 10 classes), 4-bit RepQ-BNEst,
calibrated on mnist5k digits (``--checkpoint``: a trained QAT ``.keras`` instead). Each round
times, on the same 64 test digits: LiteRT's default CPU runtime (XNNPACK, image by image as
the fidelity report runs it), ``integer_predict`` (batch 64, its accumulators in float32 where
that is exact, ``integer_emulation.conv_dtype``) and ``integer_predict`` with every conv in
float64 (the earlier form), and integer_predict's conv accumulators alone (the floor no faster
requantization can go below). Medians over ``--reps`` interleaved rounds, ratios to LiteRT.

  python benchmarks/integer_speed.py [--reps 5] [--checkpoint runs/main_job/qat_model.keras]

Writes benchmarks/results/integer_speed.{json,md,png} with the commit and the command.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import repq  # noqa: E402
from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from repq import models  # noqa: E402
from repq.data import calibration_batches, get_dataset  # noqa: E402
from repq.export import fidelity, integer_emulation, tflite_graph  # noqa: E402
from repq.export.api import export_graph, integer_tflite  # noqa: E402
from repq.training.artifacts import atomic_write, write_json, write_text  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
VARIANTS = ("LiteRT (XNNPACK)", "integer_predict", "integer_predict, float64 convs",
            "its conv accumulators alone (integer_predict's floor)")


def qat_model(checkpoint):
    if checkpoint:
        from repq.training import load_model
        return load_model(checkpoint)
    fp = models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3), norm_mode="bnest")
    qat = repq.quantize_model(fp, 4, 4, bn="bnest")
    repq.calibrate(qat, calibration_batches("mnist5k", 64, 64)[0])
    return qat


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--checkpoint", default=None, help="a trained QAT .keras (default: calibrated, untrained)")
    args = parser.parse_args()
    info = provenance()
    qat = qat_model(args.checkpoint)
    x = next(iter(get_dataset("mnist5k", "test", 64)[0]))[0].numpy()
    model_bytes = integer_tflite(qat)[0]
    interpreter = tflite_graph.interpreter(model_bytes, default_delegates=True)
    program = integer_emulation.Program(export_graph(qat)[0])
    float32_exact = integer_emulation.conv_dtype

    def float64_convs():
        integer_emulation.conv_dtype = lambda zero_point, kernel: tf.float64
        try:
            return repq.integer_predict(qat, x, graph=program, batch_size=64)
        finally:
            integer_emulation.conv_dtype = float32_exact

    convs = recorded_convs(lambda: repq.integer_predict(qat, x, graph=program, batch_size=64))

    def convs_alone():
        for conv, operands in convs:
            conv(*operands)

    runs = {VARIANTS[0]: lambda: fidelity.run_tflite(interpreter, x),
            VARIANTS[1]: lambda: repq.integer_predict(qat, x, graph=program, batch_size=64),
            VARIANTS[2]: float64_convs,
            VARIANTS[3]: convs_alone}
    outputs = {name: run() for name, run in runs.items()}  # warm-up, and the outputs compared below
    times = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    lite = np.median(times[VARIANTS[0]])
    rows = [dict(variant=name, median_s=float(np.median(t)), min_s=float(np.min(t)), max_s=float(np.max(t)),
                 ratio_to_litert=float(np.median(t) / lite),
                 equals_litert_fraction=(float(np.mean(outputs[name] == outputs[VARIANTS[0]]))
                                         if outputs[name] is not None else None))
            for name, t in times.items()]
    report = dict(provenance=info, images=len(x), reps=args.reps, checkpoint=args.checkpoint, rows=rows)
    lines = [markdown_header(info), f"{len(x)} mnist5k test digits, RepVGG-A0 W4A4 RepQ-BNEst "
             f"({args.checkpoint or 'calibrated, untrained'}); median of {args.reps} interleaved rounds.", "",
             "| variant | median (s) | min-max (s) | x LiteRT | outputs equal to LiteRT's |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['median_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | "
              f"{r['ratio_to_litert']:.2f} | "
              f"{'-' if r['equals_litert_fraction'] is None else format(r['equals_litert_fraction'], '.4f')} |"
              for r in rows]
    floor = rows[3]["ratio_to_litert"]
    lines += ["", f"Its conv accumulators alone (the TF convs on the same int8 operands, exact in float32), take "
              f"{floor:.2f}x LiteRT's "
              "whole int8 inference: LiteRT's XNNPACK runs int8 dot products, while the emulation has no int8 conv "
              "kernel in TF and must convolve in float32. No requantization work can bring integer_predict below "
              "that floor."]
    write_json(os.path.join(RESULTS, "integer_speed.json"), report)
    write_text(os.path.join(RESULTS, "integer_speed.md"), "\n".join(lines) + "\n")
    plot(rows, os.path.join(RESULTS, "integer_speed.png"))
    print("\n".join(lines))


def recorded_convs(run):
    """``[(integer_emulation._conv_acc, its arguments)]`` of every conv accumulator computed during ``run()``."""
    convs, original = [], integer_emulation._conv_acc

    def recording(*args):
        convs.append((original, args))
        return original(*args)

    integer_emulation._conv_acc = recording
    try:
        run()
    finally:
        integer_emulation._conv_acc = original
    return convs


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.barh([r["variant"] for r in rows], [r["median_s"] for r in rows],
            xerr=[[r["median_s"] - r["min_s"] for r in rows], [r["max_s"] - r["median_s"] for r in rows]])
    ax.set_xlabel("seconds for 64 images (median, min-max)")
    ax.invert_yaxis()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
