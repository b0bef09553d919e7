"""TFLite single-image latency: multi-branch FP vs merged FP vs merged int8 (learned QAT scales).

    python benchmarks/tflite_latency.py [--models repvgg_a0,...] [--rounds 5] [--iters 20]

For each model: the FP Keras model converted to float TFLite as it is (multi-branch),
its ``repq.reparametrize`` form (merged FP) and the integer export of an 8-bit QAT
copy (merged int8), run with 1 and 2 threads (LiteRT default delegates). Variants
are interleaved round by round; the median ms per image is reported, with ratios
to multi-branch FP and the .tflite sizes. Writes benchmarks/results/tflite_latency.{json,md,png}.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from repq import models  # noqa: E402
import repq  # noqa: E402
from repq.data import get_dataset  # noqa: E402
from repq.export import float_tflite, integer_tflite  # noqa: E402
from repq.qat import quantize_model  # noqa: E402
from repq.training.artifacts import write_json, write_text  # noqa: E402
from benchmarks.provenance import markdown_header, provenance  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VARIANTS = ("multi_branch_fp", "merged_fp", "merged_int8")


def build_variants(name):
    """``{variant: tflite bytes}`` for one zoo model (classifiers 32x32x3, ECBSR 64x64 LR)."""
    if name.startswith("ecbsr"):
        fp, shape = models.create_model(name), (64, 64, 1)
        calib = [x.numpy() for x, _ in get_dataset("skimage_sr", "train", 8, limit=16, patch_size=128)[0]]
    else:
        fp, shape = models.create_model(name, num_classes=10, input_shape=(32, 32, 3)), None
        calib = [x.numpy() for x, _ in get_dataset("mnist5k", "train", 16, limit=32)[0]]
    qat = quantize_model(fp, 8, 8)
    qat(calib[0], training=True)
    return {"multi_branch_fp": float_tflite(fp, shape), "merged_fp": float_tflite(repq.reparametrize(fp), shape),
            "merged_int8": integer_tflite(qat, calib, input_shape=shape)[0]}


def time_once(model_bytes, threads, iters):
    """Median ms per single-image invoke."""
    it = Interpreter(model_content=model_bytes, num_threads=threads)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
    it.invoke()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        it.invoke()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="repvgg_a0,ac_resnet18,orepa_resnet18,ecbsr_m4c16_x2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args(argv)
    results = {}
    for name in args.models.split(","):
        variants = build_variants(name)
        samples = {(v, t): [] for v in VARIANTS for t in (1, 2)}
        for _ in range(args.rounds):  # interleaved
            for t in (1, 2):
                for v in VARIANTS:
                    samples[(v, t)].append(time_once(variants[v], t, args.iters))
        results[name] = {v: {"size_bytes": len(variants[v]),
                             **{f"ms_{t}thread": float(np.median(samples[(v, t)])) for t in (1, 2)}}
                         for v in VARIANTS}
        print(name, json.dumps(results[name]))
    write(results)


def write(results):
    info = provenance()
    write_json(os.path.join(RESULTS, "tflite_latency.json"), dict(provenance=info, models=results))
    lines = ["# TFLite latency (single image, median ms; ratio to multi-branch FP)", "", markdown_header(info),
             "| model | variant | 1 thread ms | ratio | 2 threads ms | ratio | size KiB |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        base = r["multi_branch_fp"]
        for v in VARIANTS:
            lines.append(f"| {name} | {v} | {r[v]['ms_1thread']:.3f} | {r[v]['ms_1thread'] / base['ms_1thread']:.2f} "
                         f"| {r[v]['ms_2thread']:.3f} | {r[v]['ms_2thread'] / base['ms_2thread']:.2f} "
                         f"| {r[v]['size_bytes'] / 1024:.0f} |")
    write_text(os.path.join(RESULTS, "tflite_latency.md"), "\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(results)
    for i, v in enumerate(VARIANTS):
        ratios = [results[n][v]["ms_1thread"] / results[n]["multi_branch_fp"]["ms_1thread"] for n in names]
        ax.bar(np.arange(len(names)) + 0.25 * (i - 1), ratios, 0.25, label=v)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("latency / multi-branch FP (1 thread)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "tflite_latency.png"), dpi=100)


if __name__ == "__main__":
    main()
