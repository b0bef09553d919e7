"""Training-step time of RepQ-BN, RepQ-BNEst and merged LSQ relative to FP multi-branch training.

RepVGG-A0 (small-image layout, 32x32x3, batch 64, 10 classes), 4-bit, one ``tf.function``
train step (forward, backward, SGD update) per variant. The variants are timed side by side:
``--reps`` rounds, each running every variant ``--steps`` times in turn, so machine load
hits all of them alike; the median per-step time of each is reported, and its ratio to FP.

  python benchmarks/train_step.py [--reps 5] [--steps 3]

Writes benchmarks/results/train_step.{json,md,png}.
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

from repq import models  # noqa: E402
from repq.baselines import merged_lsq_model  # noqa: E402
from repq.qat import quantize_model  # noqa: E402
from repq.training.artifacts import atomic_write, write_json, write_text  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")


def variants(bits):
    """name -> model; BNEst uses its own FP model (BN estimation in both stages)."""
    def fp(norm_mode="bn"):
        return models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3), norm_mode=norm_mode)
    base = fp()
    return {"FP multi-branch": base,
            "RepQ-BN": quantize_model(base, bits, bits, bn="repq"),
            "RepQ-BNEst": quantize_model(fp("bnest"), bits, bits, bn="bnest"),
            "Merged LSQ": merged_lsq_model(base, bits, bits)}


def train_step_fn(model):
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--bits", type=int, default=4)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    x = tf.random.normal((args.batch, 32, 32, 3))
    y = tf.random.uniform((args.batch,), 0, 10, tf.int32)
    steps = {name: train_step_fn(model) for name, model in variants(args.bits).items()}
    for step in steps.values():  # trace + warm up
        step(x, y).numpy()
    times = {name: [] for name in steps}
    for _ in range(args.reps):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = step(x, y)
            loss.numpy()
            times[name].append((time.perf_counter() - start) / args.steps)
    fp = float(np.median(times["FP multi-branch"]))
    rows = [dict(variant=name, median_ms=1e3 * float(np.median(t)), ratio_to_fp=float(np.median(t)) / fp,
                 samples_ms=[1e3 * v for v in t]) for name, t in times.items()]
    meta = dict(model="repvgg_a0 (32x32x3, small layout)", batch=args.batch, bits=args.bits, reps=args.reps,
                steps_per_rep=args.steps, cpu_count=os.cpu_count(), tensorflow=tf.__version__)
    write_json(os.path.join(RESULTS, "train_step.json"), dict(meta=meta, rows=rows))
    lines = [f"RepVGG-A0 32x32, batch {args.batch}, W{args.bits}A{args.bits}, {os.cpu_count()} CPUs, "
             f"median of {args.reps} interleaved reps x {args.steps} steps", "",
             "| variant | ms / step | ratio to FP multi-branch |", "|---|---|---|"]
    lines += [f"| {r['variant']} | {r['median_ms']:.0f} | {r['ratio_to_fp']:.2f} |" for r in rows]
    write_text(os.path.join(RESULTS, "train_step.md"), "\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh([r["variant"] for r in rows], [r["ratio_to_fp"] for r in rows], color="tab:blue")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel("train-step time / FP multi-branch")
    fig.tight_layout()
    atomic_write(os.path.join(RESULTS, "train_step.png"), lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
