"""Input-pipeline throughput alone vs the training step it feeds: input-bound or compute-bound?

Pipelines (``repq.data.get_dataset``, train split, shuffled and augmented as in training):

* ``mnist5k`` batch 64 (32x32x3 normalised digits) -> RepVGG-A0 small-image layout, FP
  multi-branch and RepQ QAT (W4A4, calibrated with ``repq.calibrate``);
* ``skimage_sr`` batch 32 (x2, LR 32x32 / HR 64x64 Y patches) -> ECBSR-M4C16 x2, FP and RepQ QAT.

Each pipeline is timed in two forms: ``default`` (what ``get_dataset`` returns: parallel map
and batch with ``tf.data.AUTOTUNE``, ``prefetch(AUTOTUNE)``) and ``serial``
(``repq.data.common.AUTOTUNE`` replaced by 1 while the pipeline is built: one map thread,
one batch thread, a prefetch buffer of 1 batch). The pipeline is iterated alone (no model),
the training step (one ``tf.function``: forward, backward, SGD update) runs alone on a fixed
batch of the same size. All items are timed interleaved over ``--reps`` rounds (iterators and
traced steps persist across rounds) and the median images/s is reported. A pipeline whose
images/s is well above the step's images/s cannot be the bottleneck (compute-bound); below
it, training waits for data (input-bound). In real training both share the same CPU cores, so
the headroom (pipeline / step) should be comfortably above 1.

  python benchmarks/input_pipeline.py [--reps 3] [--batches 20] [--steps 2]

Writes benchmarks/results/input_pipeline.{json,md,png}.
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from repq import models  # noqa: E402
import repq  # noqa: E402
from repq import data  # noqa: E402
from repq.data import common  # noqa: E402
from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from benchmarks.train_step import train_step_fn  # noqa: E402
from repq.training.artifacts import atomic_write, write_json, write_text  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
CASES = (("mnist5k", 64), ("skimage_sr", 32))


def pipeline(name, batch, parallel):
    """A repeating iterator over get_dataset(name, "train", batch); serial: AUTOTUNE -> 1."""
    saved = common.AUTOTUNE
    if not parallel:
        common.AUTOTUNE = 1
    try:
        ds, info = data.get_dataset(name, "train", batch)
    finally:
        common.AUTOTUNE = saved
    return iter(ds.repeat()), info


def build_steps(name, x, y, bits):
    """label -> traced step function on (x, y) for the models fed by pipeline `name`."""
    if name == "mnist5k":
        fp = models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3))
        loss, label = keras.losses.SparseCategoricalCrossentropy(from_logits=True), "RepVGG-A0"
    else:
        fp = models.create_model("ecbsr_m4c16_x2", input_shape=(None, None, 1))
        loss, label = keras.losses.MeanAbsoluteError(), "ECBSR-M4C16 x2"
    qat = repq.calibrate(repq.quantize_model(fp, bits, bits), x)
    steps = {f"{label} FP multi-branch step": train_step_fn(fp, loss),
             f"{label} RepQ QAT W{bits}A{bits} step": train_step_fn(qat, loss)}
    for step in steps.values():
        step(x, y).numpy()  # trace + warm up
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20, help="pipeline batches per round")
    parser.add_argument("--steps", type=int, default=2, help="train steps per round")
    parser.add_argument("--bits", type=int, default=4)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    items = []  # (dataset, kind, label, batch, callable timing one round -> seconds, images per round)
    for name, batch in CASES:
        for parallel in (True, False):
            it, _ = pipeline(name, batch, parallel)
            for _ in range(5):  # warm up (loads the arrays, fills buffers)
                next(it)

            def run_pipeline(it=it):
                start = time.perf_counter()
                for _ in range(args.batches):
                    x, _ = next(it)
                return time.perf_counter() - start
            kind = "pipeline default (parallel + prefetch)" if parallel else "pipeline serial (1 thread, prefetch 1)"
            items.append((name, "pipeline", kind, batch, run_pipeline, args.batches * batch))
        x, y = next(pipeline(name, batch, True)[0])
        for label, step in build_steps(name, x, y, args.bits).items():
            def run_step(step=step, x=x, y=y):
                start = time.perf_counter()
                for _ in range(args.steps):
                    loss = step(x, y)
                loss.numpy()
                return time.perf_counter() - start
            items.append((name, "train step", label, batch, run_step, args.steps * batch))
        print(f"{name}: ready", flush=True)
    times = {i: [] for i in range(len(items))}
    for rep in range(args.reps):
        for i, item in enumerate(items):
            times[i].append(item[5] / item[4]())
        print(f"round {rep} done", flush=True)
    rows = []
    for i, (name, what, label, batch, _, _) in enumerate(items):
        rows.append(dict(dataset=name, batch=batch, what=what, item=label,
                         median_images_per_s=statistics.median(times[i]), images_per_s=times[i]))
    for name, _ in CASES:
        steps = [r for r in rows if r["dataset"] == name and r["what"] == "train step"]
        slowest, fastest = min(s["median_images_per_s"] for s in steps), max(s["median_images_per_s"] for s in steps)
        for r in rows:
            if r["dataset"] == name and r["what"] == "pipeline":
                r["headroom_vs_fastest_step"] = r["median_images_per_s"] / fastest
                r["headroom_vs_slowest_step"] = r["median_images_per_s"] / slowest
                r["verdict"] = "compute-bound" if r["median_images_per_s"] > fastest else "input-bound"
    meta = dict(reps=args.reps, batches_per_round=args.batches, steps_per_round=args.steps, bits=args.bits,
                cpu_count=os.cpu_count(), tensorflow=tf.__version__,
                note="each item timed alone (no overlap), interleaved rounds on a shared, loaded 2-core CPU")
    info = provenance()
    write_json(os.path.join(RESULTS, "input_pipeline.json"), dict(provenance=info, meta=meta, rows=rows))
    lines = [markdown_header(info), f"Train split, images/s (median of {args.reps} interleaved rounds; pipeline {args.batches} batches, "
             f"step {args.steps} steps per round), {os.cpu_count()} shared CPU cores. Headroom = pipeline images/s "
             "/ train-step images/s (fastest step; slowest step): > 1 means the step, not the input, is the "
             "bottleneck.", "",
             "| dataset | batch | item | images/s | headroom (fastest; slowest step) |", "|---|---|---|---|---|"]
    for r in rows:
        head = (f"{r['headroom_vs_fastest_step']:.1f}x; {r['headroom_vs_slowest_step']:.1f}x ({r['verdict']})"
                if r["what"] == "pipeline" else "")
        lines.append(f"| {r['dataset']} | {r['batch']} | {r['item']} | {r['median_images_per_s']:.0f} | {head} |")
    write_text(os.path.join(RESULTS, "input_pipeline.md"), "\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    labels = [f"{r['dataset']}: {r['item']}" for r in rows]
    colors = ["tab:green" if r["what"] == "pipeline" else "tab:blue" for r in rows]
    ax.barh(labels[::-1], [r["median_images_per_s"] for r in rows][::-1], color=colors[::-1])
    ax.set_xscale("log")
    ax.set_xlabel("images / s (log); green: input pipeline alone, blue: train step alone")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    atomic_write(os.path.join(RESULTS, "input_pipeline.png"), lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
