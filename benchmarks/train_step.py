"""Training-step time of RepQ-BN, RepQ-BNEst and merged LSQ relative to FP multi-branch training.

Per model family (32x32x3 inputs, 10 classes, the embedded recipe's stride layout, batch 64,
``--bits``): one ``tf.function`` train step (forward, backward, SGD update) per variant. The
variants are timed side by side:
``--reps`` rounds, each running every variant ``--steps`` times in turn, so machine load hits
all of them alike; the median per-step time of each, its spread (min-max over the rounds) and its
ratio to the FP multi-branch step are reported.

Next to the times: the machine's practical peak (a 2048^3 fp32 matmul and a large conv in TF,
GFLOP/s) and each step's achieved GFLOP/s, from the FLOPs TF's profiler counts in the traced
step graph (forward and backward convs, matmuls and the element-wise ops it has costs for).

  python benchmarks/train_step.py [--models repvgg_a0 ac_resnet18 orepa_resnet18] [--reps 5] [--steps 3]

Writes benchmarks/results/train_step.{json,md,png} with the commit and the command.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from repq import models  # noqa: E402
from repq.baselines import merged_lsq_model  # noqa: E402
from repq.qat import quantize_model  # noqa: E402
from repq.training.artifacts import atomic_write, write_json, write_text  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
FAMILIES = ("repvgg_a0", "ac_resnet18", "orepa_resnet18")
FP = "FP multi-branch"


def recipe_stem(name):
    """The stride layout of ``name``'s embedded recipe (``repq.configs``)."""
    import importlib
    family = name.split("_x")[0] if name.startswith("ecbsr") else name
    return importlib.import_module(f"repq.configs.{family}").get_config().stem


def variants(name, bits):
    """label -> model; BNEst uses its own FP model (BN estimation in both stages)."""
    stem = recipe_stem(name)

    def fp(norm_mode="bn"):
        return models.create_model(name, num_classes=10, input_shape=(32, 32, 3), norm_mode=norm_mode, stem=stem)
    base = fp()
    return {FP: base,
            "RepQ-BN": quantize_model(base, bits, bits, bn="repq"),
            "RepQ-BNEst": quantize_model(fp("bnest"), bits, bits, bn="bnest"),
            "Merged LSQ": merged_lsq_model(base, bits, bits)}


def train_step_fn(model, loss_fn=None):
    """A traced ``step(x, y) -> loss``: forward, backward and an SGD (momentum 0.9) update of ``model``
    (``loss_fn`` default: sparse categorical cross-entropy on logits)."""
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = loss_fn or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss
    return step


def step_flops(step, x, y):
    """Float operations TF's profiler counts in the traced graph of ``step(x, y)``."""
    from tensorflow.python.profiler import model_analyzer, option_builder

    graph = step.get_concrete_function(x, y).graph
    options = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation()) \
        .with_empty_output().build()
    return int(model_analyzer.profile(graph, options=options).total_float_ops)


def peak_gflops(reps=5):
    """The best of ``reps`` runs of a 2048^3 fp32 matmul and a 3x3 conv (64x32x32x256 -> 256), GFLOP/s."""
    a, b = tf.random.normal((2048, 2048)), tf.random.normal((2048, 2048))
    x, k = tf.random.normal((64, 32, 32, 256)), tf.random.normal((3, 3, 256, 256))
    work = {"matmul": (lambda: tf.matmul(a, b), 2 * 2048 ** 3),
            "conv": (lambda: tf.nn.conv2d(x, k, 1, "SAME"), 2 * 64 * 32 * 32 * 9 * 256 * 256)}
    best = {}
    for name, (op, flops) in work.items():
        op().numpy()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            op().numpy()
            times.append(time.perf_counter() - start)
        best[name] = flops / min(times) / 1e9
    return best


def time_family(name, args, x, y):
    keras.utils.set_random_seed(0)
    steps, flops = {}, {}
    for key, model in variants(name, args.bits).items():
        steps[key] = train_step_fn(model)
        flops[key] = step_flops(steps[key], x, y)
    for step in steps.values():  # trace and warm up
        step(x, y).numpy()
    times = {key: [] for key in steps}
    for _ in range(args.reps):
        for key, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = step(x, y)
            loss.numpy()
            times[key].append((time.perf_counter() - start) / args.steps)
    fp = float(np.median(times[FP]))
    return [dict(model=name, variant=key, median_ms=1e3 * float(np.median(t)), min_ms=1e3 * float(np.min(t)),
                 max_ms=1e3 * float(np.max(t)), ratio_to_fp=float(np.median(t)) / fp,
                 ratio_min=float(np.min(t)) / fp, ratio_max=float(np.max(t)) / fp,
                 gflop_per_step=flops[key] / 1e9, gflops=flops[key] / 1e9 / float(np.median(t)),
                 samples_ms=[1e3 * v for v in t]) for key, t in times.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--bits", type=int, default=4)
    args = parser.parse_args()
    info = provenance()
    keras.utils.set_random_seed(0)
    x = tf.random.normal((args.batch, 32, 32, 3))
    y = tf.random.uniform((args.batch,), 0, 10, tf.int32)
    peak = peak_gflops()
    rows = [row for name in args.models for row in time_family(name, args, x, y)]
    top = max(peak.values())
    for row in rows:
        row["fraction_of_peak"] = row["gflops"] / top
    meta = dict(models=args.models, layouts={m: recipe_stem(m) for m in args.models}, batch=args.batch, bits=args.bits,
                reps=args.reps, steps_per_rep=args.steps, cpu_count=os.cpu_count(), tensorflow=tf.__version__,
                peak_gflops=peak)
    write_json(os.path.join(RESULTS, "train_step.json"), dict(provenance=info, meta=meta, rows=rows))
    lines = [markdown_header(info),
             f"32x32x3, batch {args.batch}, W{args.bits}A{args.bits}, {os.cpu_count()} CPUs; median (min-max) of "
             f"{args.reps} interleaved rounds x {args.steps} steps. Machine peak (TF fp32): matmul "
             f"{peak['matmul']:.0f} GFLOP/s, conv {peak['conv']:.0f} GFLOP/s.", "",
             "| model (layout) | variant | ms / step | ratio to FP multi-branch | GFLOP / step | GFLOP/s | of peak |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} ({meta['layouts'][r['model']]}) | {r['variant']} | {r['median_ms']:.0f} "
              f"({r['min_ms']:.0f}-{r['max_ms']:.0f}) | {r['ratio_to_fp']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) "
              f"| {r['gflop_per_step']:.1f} | {r['gflops']:.1f} | {100 * r['fraction_of_peak']:.0f} % |" for r in rows]
    write_text(os.path.join(RESULTS, "train_step.md"), "\n".join(lines) + "\n")
    plot(rows, os.path.join(RESULTS, "train_step.png"))
    print("\n".join(lines))


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1))
    labels = [f"{r['model']}: {r['variant']}" for r in rows]
    ax.barh(labels, [r["ratio_to_fp"] for r in rows], color="tab:blue",
            xerr=[[r["ratio_to_fp"] - r["ratio_min"] for r in rows], [r["ratio_max"] - r["ratio_to_fp"] for r in rows]])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("train-step time / FP multi-branch step (median, min-max)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
