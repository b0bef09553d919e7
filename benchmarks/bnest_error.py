"""BNEst's estimation error on a trained model's own feature maps, per layer.

For every rep block of a trained model, on test batches: the true per-channel batch mean and
variance of each normalized branch output, against BNEst's estimate from the block input
(``E[X]·ΣW``, ``V[X]·ΣW²``, SPEC B), and the padding-aware estimate (``bnest_padding_aware``: only
the taps that read the input count). Reported per layer and estimate: the feature-map size, the median over
channels of ``|est − true| / std_true`` for the mean and of ``est / true`` for the variance, the latter also per
branch (in the block's ``branch_kernels`` order). Both estimates take one input mean and variance per channel
for every position; for maps of at most SMALL_MAP positions a side the input's variance at each position (mean
over channels) is reported too, to show where that does not hold.

  python benchmarks/bnest_error.py --checkpoint runs/main_job/fp_model.keras [--batches 4] [--name bnest_error]

Writes benchmarks/results/<name>.{json,md,png} with the commit and the command.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from repq import models  # noqa: E402,F401  (registers the zoo's layers)
from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from repq.data import get_dataset  # noqa: E402
from repq.layers.base import RepConvBlock  # noqa: E402
from repq.layers.norm_stats import batch_moments, estimate_output_moments  # noqa: E402


SMALL_MAP = 4  # input maps up to this size get their per-position variance reported


def position_variance(inputs):
    """(H, W) variance over the batch at each position of ``inputs`` (N, H, W, C), averaged over channels."""
    return np.asarray(inputs).var(axis=0).mean(axis=-1)


def block_inputs(model, x):
    """``{block name: its input tensor}`` for every rep block of a functional ``model`` on batch ``x``."""
    blocks = [layer for layer in model.layers if isinstance(layer, RepConvBlock)]
    probe = keras.Model(model.inputs, [block.input for block in blocks])
    outputs = probe(x, training=False)
    return dict(zip([b.name for b in blocks], outputs if isinstance(outputs, (list, tuple)) else [outputs]))


def layer_errors(block, inputs):
    """Per normalized branch, for the spec's estimate and then the padding-aware one: (median |mean error| /
    true std, median est var / true var) over channels, as 4 values."""
    rows = []
    for (kernel, bias), output, norm in zip(block.branch_kernels(), block.branch_outputs(inputs), block.norms):
        if norm is None:
            continue
        true_mean, true_var = (np.asarray(v) for v in batch_moments(output))
        std = np.sqrt(true_var + 1e-8)
        row = []
        for padding in (None, (block.pad, block.strides)):
            est_mean, est_var = (np.asarray(v) for v in estimate_output_moments(inputs, kernel, bias, block.groups,
                                                                                padding=padding))
            row += [float(np.median(np.abs(est_mean - true_mean) / std)), float(np.median(est_var / (true_var + 1e-8)))]
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=os.path.join("runs", "main_job", "fp_model.keras"))
    parser.add_argument("--batches", type=int, default=4, help="test batches of 64")
    parser.add_argument("--name", default="bnest_error", help="artifact name under --results_dir")
    parser.add_argument("--results_dir", default=RESULTS)
    args = parser.parse_args(argv)
    model = keras.saving.load_model(args.checkpoint, compile=False)
    test = get_dataset("mnist5k", "test", 64)[0].take(args.batches)
    per_layer = {}
    for x, _ in test:
        for name, inputs in block_inputs(model, x).items():
            block = model.get_layer(name)
            per_layer.setdefault(name, dict(size=int(inputs.shape[1]), norm_mode=block.norm_mode, values=[],
                                            position_var=[]))
            per_layer[name]["values"].append(layer_errors(block, inputs))
            if inputs.shape[1] <= SMALL_MAP:
                per_layer[name]["position_var"].append(position_variance(inputs))
    rows = []
    for name, entry in per_layer.items():
        values = np.array(entry["values"])  # (batches, branches, 4)
        rows.append(dict(layer=name, map_size=entry["size"], norm_mode=entry["norm_mode"],
                         mean_error_over_std=float(values[..., 0].mean()), var_ratio=float(values[..., 1].mean()),
                         worst_branch_var_ratio=float(values[..., 1].mean(0).max()),
                         padding_aware_mean_error_over_std=float(values[..., 2].mean()),
                         padding_aware_var_ratio=float(values[..., 3].mean()),
                         padding_aware_worst_branch_var_ratio=float(values[..., 3].mean(0).max()),
                         branch_var_ratios=values[..., 1].mean(0).tolist(),
                         padding_aware_branch_var_ratios=values[..., 3].mean(0).tolist(),
                         input_position_var=(np.mean(entry["position_var"], axis=0).tolist()
                                             if entry["position_var"] else None)))
    info = provenance(None if argv is None else [__file__, *argv])
    lines = [markdown_header(info), f"Checkpoint: `{args.checkpoint}`; {args.batches} test batches of 64.", "",
             "Spec: the formula of SPEC B (border neglected); padding-aware: `bnest_padding_aware=True`.", "",
             "| layer | map | norm | mean error / std | var est / true (mean over branches) | worst branch var ratio "
             "| padding-aware: mean error / std | var est / true | worst branch var ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['map_size']}x{r['map_size']} | {r['norm_mode']} | {r['mean_error_over_std']:.3f} | "
              f"{r['var_ratio']:.2f} | {r['worst_branch_var_ratio']:.2f} | {r['padding_aware_mean_error_over_std']:.3f} "
              f"| {r['padding_aware_var_ratio']:.2f} | {r['padding_aware_worst_branch_var_ratio']:.2f} |" for r in rows]
    lines += ["", "Variance est / true per branch (spec; padding-aware), in the block's branch order:", "",
              "| layer | spec | padding-aware |", "|---|---|---|"]
    lines += [f"| {r['layer']} | {' / '.join(f'{v:.2f}' for v in r['branch_var_ratios'])} | "
              f"{' / '.join(f'{v:.2f}' for v in r['padding_aware_branch_var_ratios'])} |" for r in rows]
    small = [r for r in rows if r["input_position_var"] is not None]
    if small:
        lines += ["", f"Input variance at each position (over the batch, mean over channels and batches; maps up to "
                  f"{SMALL_MAP}x{SMALL_MAP}), rows top to bottom:", "", "| layer | map | per-position variance |",
                  "|---|---|---|"]
        lines += [f"| {r['layer']} | {r['map_size']}x{r['map_size']} | "
                  + " ; ".join(" ".join(f"{v:.3g}" for v in row) for row in r["input_position_var"]) + " |"
                  for r in small]
    from repq.training import write_json, write_text

    write_json(os.path.join(args.results_dir, f"{args.name}.json"), dict(provenance=info, checkpoint=args.checkpoint, rows=rows))
    write_text(os.path.join(args.results_dir, f"{args.name}.md"), "\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([r["var_ratio"] for r in rows], "o-", color="C0", label="variance: estimated / true (spec)")
    ax.plot([r["mean_error_over_std"] for r in rows], "s-", color="C1", label="|mean error| / true std (spec)")
    ax.plot([r["padding_aware_var_ratio"] for r in rows], "o--", color="C0", alpha=0.6,
            label="variance (padding-aware)")
    ax.plot([r["padding_aware_mean_error_over_std"] for r in rows], "s--", color="C1", alpha=0.6,
            label="mean error (padding-aware)")
    ax.axhline(1.0, color="gray", lw=0.5)
    ax.set_xticks(range(len(rows)), [f"{r['layer']}\\n{r['map_size']}px" for r in rows], rotation=90, fontsize=6)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.results_dir, f"{args.name}.png"), dpi=100)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
