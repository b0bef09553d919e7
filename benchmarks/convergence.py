"""Why the embedded recipes trained slowly: RepVGG-A0 on mnist5k, probed side by side in one run.

For each configuration (stride layout x norm mode x optimizer) the same data stream (seed 0)
trains a fresh model for ``--steps`` steps; recorded: the training loss every 5 steps, the
std of the logits after the first step (an exploding first update shows here), the median
step time and the top-1 on the 1,000 test digits in inference mode (moving statistics).

  python benchmarks/convergence.py [--steps 72] [--configs small:bnest:adam ...]

Writes benchmarks/results/convergence.{json,md,png}, with the commit and the command.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from repq.configs import repvgg_a0 as recipes  # noqa: E402
from repq import models  # noqa: E402
from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from repq.data import get_dataset  # noqa: E402
from repq.training import build_loss, build_optimizer, evaluate, write_json, write_text  # noqa: E402

# layout:norm:optimizer. "sgd" is the old embedded recipe (Table S1's SGD 0.1, momentum 0.9, one
# warmup epoch of 24 steps, label smoothing 0.1, weight decay 1e-4; small layout); "adam" is the new
# one (Adam 1e-3, one warmup epoch, no label smoothing, no weight decay).
DEFAULT_CONFIGS = ("small:bnest:sgd", "small:bnest:adam", "half:bnest:adam", "half:bn:adam",
                   "imagenet:bnest:adam", "imagenet:bn:adam")


def recipe_for(optimizer, steps):
    """The embedded recipe of RepVGG-A0 (``adam``) or the one it replaced (``sgd``), shaped like the
    old one: 3 epochs of ``steps // 3`` steps, the first a warmup (``--steps 72`` is the old recipe)."""
    recipe = recipes.get_config()
    if optimizer == "sgd":
        old = recipes.get_config("imagenet")
        for key in ("optimizer", "label_smoothing", "weight_decay"):
            recipe[key] = old[key]
        for key in recipe.lr:
            recipe.lr[key] = old.lr[key]
    recipe.fp_epochs, recipe.steps_per_epoch, recipe.warmup_epochs = 3, steps // 3, 1
    return recipe


def probe(config, steps, batch_size, test):
    layout, norm, optimizer = config.split(":")
    keras.utils.set_random_seed(0)
    recipe = recipe_for(optimizer, steps)
    model = models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3), norm_mode=norm, stem=layout)
    model.compile(optimizer=build_optimizer(recipe, "fp", recipe.steps_per_epoch), loss=build_loss(recipe))
    train = iter(get_dataset("mnist5k", "train", batch_size, seed=0)[0].repeat())
    losses, times, first_std = [], [], None
    for step in range(recipe.fp_epochs * recipe.steps_per_epoch):
        x, y = next(train)
        start = time.perf_counter()
        loss = float(model.train_on_batch(x, y))
        times.append(time.perf_counter() - start)
        losses.append(loss)
        if step == 0:
            first_std = float(np.std(model(x, training=True)))
    top1 = evaluate(model, test, "classification")["top1"]
    row = dict(config=config, layout=layout, norm=norm, optimizer=optimizer, steps=len(losses),
               loss_every_5=[round(v, 4) for v in losses[::5]], final_loss=float(np.mean(losses[-5:])),
               logits_std_after_step_1=first_std, step_ms=1000 * float(np.median(times[2:])), top1=top1)
    print(f"{config:22s} loss(last 5)={row['final_loss']:.3f} logits std after step 1={first_std:.1f} "
          f"step={row['step_ms']:.0f} ms top1={top1:.1f}", flush=True)
    return row


def markdown(rows, info):
    lines = [markdown_header(info), "| layout | norm | optimizer | steps | loss (mean of last 5) | logits std after step 1 "
             "| step (ms) | test top-1 (%) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['norm']} | {r['optimizer']} | {r['steps']} | {r['final_loss']:.3f} | "
                     f"{r['logits_std_after_step_1']:.1f} | {r['step_ms']:.0f} | {r['top1']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        ax.plot(np.arange(len(r["loss_every_5"])) * 5, r["loss_every_5"], label=r["config"])
    ax.set_xlabel("training step (batch 64)")
    ax.set_ylabel("training loss")
    ax.set_title("RepVGG-A0 on mnist5k: first steps")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=72, help="training steps per configuration")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--configs", nargs="*", default=list(DEFAULT_CONFIGS), help="layout:norm:optimizer")
    args = parser.parse_args()
    info = provenance()  # before the runs: the code they ran
    test = get_dataset("mnist5k", "test", 250)[0]
    rows = [probe(config, args.steps, args.batch_size, test) for config in args.configs]
    write_json(os.path.join(RESULTS, "convergence.json"), dict(provenance=info, rows=rows))
    write_text(os.path.join(RESULTS, "convergence.md"), markdown(rows, info))
    plot(rows, os.path.join(RESULTS, "convergence.png"))
    print(markdown(rows, info))


if __name__ == "__main__":
    main()
