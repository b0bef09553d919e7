"""Integer TFLite vs Keras QAT fidelity for every zoo family at 8 and 4 bits.

    python benchmarks/export_fidelity.py [--models repvgg_a0,...] [--bits 4,8] [--fp_steps 40] [--qat_steps 40]

For each model: a short FP fit on the embedded data (mnist5k 32x32 for classifiers,
skimage_sr patches for ECBSR), ``repq.quantize_model`` and a short QAT fit, then
``repq.export_tflite`` on held-out images. Reports, per model and bit width, the
max / mean |TFLite - Keras QAT| in output steps and the top-1 agreement (PSNR for
ECBSR) on LiteRT's default CPU runtime (XNNPACK) and on TFLite's builtin kernels, and
the same against the QAT model computed in integers (``repq.integer_predict``, the
runtime's requantization rules; bit-exact means 0 steps on every output).
The short fits only give the networks realistic statistics; accuracies are not the point (the
trained models of the QAT table: benchmarks/trained_fidelity.py). The 256 mnist5k test images are
the split's first, class-stratified (all 10 digits).
Writes benchmarks/results/export_fidelity.{json,md,png} with the commit and the command.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from repq import models  # noqa: E402
import repq  # noqa: E402
from repq.data import get_dataset  # noqa: E402
from repq.training.artifacts import atomic_write, write_json, write_text  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MODELS = ("repvgg_a0", "ac_resnet18", "orepa_resnet18", "ecbsr_m4c16_x2")


def _data(name):
    """``(train dataset, representative x batches, eval (x, y) batches)``."""
    if name.startswith("ecbsr"):
        train, _ = get_dataset("skimage_sr", "train", 8, limit=64, patch_size=32)
        test, _ = get_dataset("skimage_sr", "test", 2, limit=4, image_size=96)
    else:
        train, _ = get_dataset("mnist5k", "train", 32, limit=1024)
        test, _ = get_dataset("mnist5k", "test", 64, limit=256)
    rep = [x.numpy() for x, _ in train.take(4)]
    return train.repeat(), rep, [(x.numpy(), y.numpy()) for x, y in test]


def _fit(model, train, steps, sr, lr):
    loss = "mae" if sr else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
    model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0)


def measure(name, bits, fp_steps, qat_steps):
    sr = name.startswith("ecbsr")
    keras.utils.set_random_seed(0)
    fp = models.create_model(name) if sr else models.create_model(name, num_classes=10, input_shape=(32, 32, 3))
    train, rep, test = _data(name)
    _fit(fp, train, fp_steps, sr, 1e-3)
    qat = repq.quantize_model(fp, bits, bits)
    _fit(qat, train, qat_steps, sr, 1e-4)
    with tempfile.TemporaryDirectory() as tmp:
        _, report = repq.export_tflite(qat, os.path.join(tmp, "m.tflite"), rep, test, sr_scale=2 if sr else None)
    builtin, emulated = report["builtin_kernels"], report["integer_emulation"]
    row = dict(model=name, bits=bits, output_step=report["output_step"], images=report["num_images"],
               xnnpack_max_steps=report["max_abs_diff_steps"], xnnpack_mean_steps=report["mean_abs_diff_steps"],
               builtin_max_steps=builtin["max_abs_diff_steps"], builtin_mean_steps=builtin["mean_abs_diff_steps"],
               integer_max_steps=emulated["max_abs_diff_steps"], integer_mean_steps=emulated["mean_abs_diff_steps"],
               integer_bit_exact_fraction=emulated["bit_exact_fraction"],
               all_convs_integer=report["all_convs_integer"], integer_only=report["integer_only"],
               weights_on_grid=report["weights_on_grid"],
               scales_match_learned=report["scales_match_learned"], size_bytes=report["size_bytes"])
    for key in ("top1_agreement", "accuracy_keras", "accuracy_tflite", "psnr_keras", "psnr_tflite"):
        if key in report:
            row[key] = report[key]
            if key in builtin:
                row["builtin_" + key] = builtin[key]
    return row


def markdown(info, rows, args):
    lines = [markdown_header(info), f"Short fits: {args.fp_steps} FP + {args.qat_steps} QAT steps (Adam); differences in output "
             "quantization steps; XNNPACK = LiteRT's default CPU runtime, builtin = TFLite's builtin kernels; "
             "columns 3-4 compare with the float-simulated QAT model, column 5 the XNNPACK model with the QAT "
             "model computed in integers (repq.integer_predict).", "",
             "| model | bits | XNNPACK max / mean | builtin max / mean | integer-exact Keras vs XNNPACK: max / "
             "bit-exact outputs | top-1 agree (XNNPACK / builtin) | Keras / TFLite metric "
             "| integer ops only, int8 convs, grid, learned scales |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "psnr_keras" in r:
            agree, metric = "-", f"{r['psnr_keras']:.2f} / {r['psnr_tflite']:.2f} dB"
        else:
            agree = f"{100 * r['top1_agreement']:.1f} / {100 * r['builtin_top1_agreement']:.1f} %"
            metric = f"{100 * r['accuracy_keras']:.1f} / {100 * r['accuracy_tflite']:.1f} %"
        checks = all(r[k] for k in ("all_convs_integer", "integer_only", "weights_on_grid", "scales_match_learned"))
        lines.append(f"| {r['model']} | {r['bits']} | {r['xnnpack_max_steps']:.0f} / {r['xnnpack_mean_steps']:.3f} | "
                     f"{r['builtin_max_steps']:.0f} / {r['builtin_mean_steps']:.3f} | "
                     f"{r['integer_max_steps']:.0f} / {100 * r['integer_bit_exact_fraction']:.2f} % | "
                     f"{agree} | {metric} | {checks} |")
    return "\n".join(lines) + "\n"


def plot(rows, path, labels=None):
    """Max |TFLite - Keras| per row (keys ``xnnpack_/builtin_/integer_max_steps``) as grouped bars; ``labels``:
    the x tick per row (default: model and bit width)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = labels or [f"{r['model']}\nW{r['bits']}A{r['bits']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.0 * len(rows)), 4.5))
    ax.bar(x - 0.27, [r["xnnpack_max_steps"] for r in rows], 0.27, label="XNNPACK vs float-simulated QAT")
    ax.bar(x, [r["builtin_max_steps"] for r in rows], 0.27, label="builtin kernels vs float-simulated QAT")
    ax.bar(x + 0.27, [r["integer_max_steps"] for r in rows], 0.27, label="XNNPACK vs integer-exact QAT")
    ax.plot(x + 0.27, [r["integer_max_steps"] for r in rows], "k.", markersize=4)
    ax.axhline(2, color="k", linestyle="--", linewidth=1, label="2 output steps")
    ax.set_xticks(x, labels, fontsize=6, rotation=60, ha="right")
    ax.set_ylabel("max |TFLite - Keras| (output steps)")
    ax.set_yscale("symlog", linthresh=1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--bits", default="4,8")
    parser.add_argument("--fp_steps", type=int, default=40)
    parser.add_argument("--qat_steps", type=int, default=40)
    args = parser.parse_args()
    info = provenance()
    rows = []
    for name in args.models.split(","):
        for bits in (int(b) for b in args.bits.split(",")):
            start = time.time()
            rows.append(measure(name, bits, args.fp_steps, args.qat_steps))
            rows[-1]["wall_s"] = time.time() - start
            print(f"{name} W{bits}: XNNPACK max {rows[-1]['xnnpack_max_steps']:.0f}, builtin max "
                  f"{rows[-1]['builtin_max_steps']:.0f}, integer-exact max {rows[-1]['integer_max_steps']:.0f} steps "
                  f"({rows[-1]['wall_s']:.0f} s)", flush=True)
    os.makedirs(RESULTS, exist_ok=True)
    write_json(os.path.join(RESULTS, "export_fidelity.json"), dict(provenance=info, args=vars(args), rows=rows))
    write_text(os.path.join(RESULTS, "export_fidelity.md"), markdown(info, rows, args))
    plot(rows, os.path.join(RESULTS, "export_fidelity.png"))
    print(markdown(info, rows, args))


if __name__ == "__main__":
    main()
