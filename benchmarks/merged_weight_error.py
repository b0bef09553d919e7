"""Why PTQ of a merged RepVGG collapses at low weight bits: per-layer error of its round-to-nearest kernels.

The FP model is reparametrized (branches merged into one kernel) and quantized as PTQ starts it
(``repq.quantize_model`` with ``PrecisionRule()``: per-output-channel symmetric weights, MSE-searched
steps); for each merged conv the script reports the relative error ``||Q(W) - W|| / ||W||``, the share of
weights rounded to 0, and how many steps the channel's largest weight spans, at each bit width.

  python benchmarks/merged_weight_error.py --fp_checkpoint runs/qat_results/repvgg_a0_s0_fp/fp_model.keras

Writes benchmarks/results/merged_weight_error.{json,md} with the commit and the command.
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from repq.training.artifacts import write_json, write_text  # noqa: E402


def layer_errors(fp_model, bits):
    """Rows ``{layer, bits, layer_bits, rel_error, zero_share, max_over_step}`` of every quantized layer when the
    model is quantized at ``bits`` (``layer_bits``: the layer's own, 8 for the first and last)."""
    import repq
    from repq.qat.rules import PrecisionRule
    from repq.qat.transform import quantized_layers

    q = repq.quantize_model(repq.reparametrize(fp_model), bits, 8, rule=PrecisionRule())
    rows = []
    for wrapper in quantized_layers(q):
        kernel = np.asarray(wrapper.float_kernel_and_bias()[0], np.float64)
        quantized = np.asarray(wrapper.weight_quantizer(kernel.astype(np.float32)), np.float64)
        step = np.asarray(wrapper.weight_quantizer.positive_step(), np.float64)
        rows.append(dict(layer=wrapper.name, bits=bits, layer_bits=wrapper.weight_bits,
                         rel_error=float(np.linalg.norm(quantized - kernel) / np.linalg.norm(kernel)),
                         zero_share=float(np.mean(quantized == 0)),
                         max_over_step=float(np.mean(np.abs(kernel).reshape(-1, kernel.shape[-1]).max(0) / step))))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp_checkpoint", required=True, help="the trained FP model (.keras)")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4], help="weight bits (inputs stay 8-bit)")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "merged_weight_error"))
    args = parser.parse_args(argv)
    import keras

    import repq  # noqa: F401  (registers the layers for loading)

    info = provenance()
    fp = keras.saving.load_model(args.fp_checkpoint, compile=False)
    rows = [r for bits in args.bits for r in layer_errors(fp, bits)]
    write_json(args.output + ".json", dict(provenance=info, fp_checkpoint=args.fp_checkpoint, rows=rows))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    lines = [markdown_header(info),
             f"Merged layers of `{args.fp_checkpoint}` quantized to nearest as PTQ starts them (first and last layer "
             "8-bit). Per bit width: relative kernel error / share of weights rounded to 0 / mean over channels of "
             "max|W| in steps.", "",
             "| layer | " + " | ".join(f"W{b}" for b in args.bits) + " |", "|---|" + "---|" * len(args.bits)]
    by_key = {(r["layer"], r["bits"]): r for r in rows}
    for layer in layers:
        cells = []
        for bits in args.bits:
            r = by_key[layer, bits]
            cells.append(f"{r['rel_error']:.3f} / {r['zero_share']:.2f} / {r['max_over_step']:.1f}"
                         + (" (8-bit edge)" if r["layer_bits"] != bits else ""))
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    write_text(args.output + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
