"""Post-training quantization of a classifier: FP vs quantized top-1, per-unit losses.

    python ptq.py --model resnet18 --weight_bits 4 --act_bits 4 --method qdrop \
        --calib_size 1024 --iters 20000 --fp_checkpoint fp.keras --dataset mnist5k --output_dir out

Without --fp_checkpoint a small FP model is trained first (repq.ptq.fp_baseline, 3 epochs Adam).
Writes results.json, unit_losses.json and unit_losses.png to --output_dir.
"""

import json
import os
import sys

from absl import app, flags

flags.DEFINE_string("model", "resnet18", "model name (models.create_model)")
flags.DEFINE_enum("method", "qdrop", ["rtn", "adaround", "brecq", "qdrop", "mrecg_modcap", "mrecg_loss"],
                  "PTQ method")
flags.DEFINE_integer("weight_bits", 4, "weight bits (2..8)")
flags.DEFINE_integer("act_bits", 4, "activation bits (2..8)")
flags.DEFINE_integer("calib_size", 1024, "calibration images from the train split")
flags.DEFINE_integer("batch_size", 32, "samples per reconstruction step")
flags.DEFINE_integer("iters", 20000, "reconstruction steps per unit")
flags.DEFINE_string("fp_checkpoint", None, "trained FP model (.keras); trained briefly if omitted")
flags.DEFINE_string("dataset", "mnist5k", "dataset name (repq.data)")
flags.DEFINE_string("output_dir", "ptq_out", "where results go")
flags.DEFINE_string("scheme", None, "MRECG scheme, e.g. '0,(1,2),3,...' (one entry per merged unit)")
flags.DEFINE_integer("topk", None, "MRECG merges (default 2/4/7 for ResNet-18/50/MobileNetV2)")
flags.DEFINE_float("width_multiplier", None, "MobileNetV2 width when training a new FP model")
flags.DEFINE_integer("seed", 0, "random seed")
FLAGS = flags.FLAGS


def plot_losses(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    if report.get("baseline_unit_losses"):
        ax.plot(report["baseline_unit_losses"], "o-", label="QDrop (base units)")
    ax.plot(report["unit_losses"], "s-", label=report["method"])
    ax.set_xlabel("reconstruction unit")
    ax.set_ylabel("L_rec after reconstruction")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run():
    import keras

    import models  # noqa: F401  (registers the layers for loading)
    from repq.data import calibration_batches, get_dataset
    from repq.ptq import quantize_ptq
    from repq.ptq.fp_baseline import top1_accuracy, train_fp_model
    from repq.ptq.units import parse_scheme

    from repq.ptq.fake_quant import affine_range

    affine_range(FLAGS.weight_bits), affine_range(FLAGS.act_bits)  # fail before any training
    if FLAGS.calib_size < 1:
        raise ValueError("--calib_size must be >= 1 (calibration data is empty).")
    scheme = parse_scheme(FLAGS.scheme) if FLAGS.scheme else None
    if FLAGS.fp_checkpoint:
        if not os.path.exists(FLAGS.fp_checkpoint):
            raise ValueError(f"--fp_checkpoint {FLAGS.fp_checkpoint} does not exist.")
        model = keras.saving.load_model(FLAGS.fp_checkpoint)
    else:
        kwargs = {"width_multiplier": FLAGS.width_multiplier} if FLAGS.width_multiplier else {}
        model = train_fp_model(FLAGS.model, FLAGS.dataset, seed=FLAGS.seed, **kwargs)
    test, _ = get_dataset(FLAGS.dataset, "test", 250)
    calib = calibration_batches(FLAGS.dataset, FLAGS.calib_size, FLAGS.batch_size, seed=FLAGS.seed)
    qmodel, report = quantize_ptq(model, calib, FLAGS.method, FLAGS.weight_bits, FLAGS.act_bits,
                                  iters=FLAGS.iters, batch_size=FLAGS.batch_size, scheme=scheme,
                                  topk=FLAGS.topk, seed=FLAGS.seed)
    fp_top1, q_top1 = top1_accuracy(model, test), top1_accuracy(qmodel, test)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    results = {"model": FLAGS.model, "dataset": FLAGS.dataset, "fp_top1": fp_top1, "ptq_top1": q_top1,
               **{k: v for k, v in report.items() if k not in ("unit_losses", "unit_losses_init")}}
    results["scheme"] = str(report["scheme"]) if report["scheme"] else None
    with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(FLAGS.output_dir, "unit_losses.json"), "w") as f:
        json.dump({k: report.get(k) for k in ("units", "unit_losses", "unit_losses_init",
                                              "baseline_unit_losses")}, f, indent=1)
    plot_losses(report, os.path.join(FLAGS.output_dir, "unit_losses.png"))
    print(f"| model | W/A | method | FP top-1 | PTQ top-1 | time (s) |\n|---|---|---|---|---|---|\n"
          f"| {FLAGS.model} | {FLAGS.weight_bits}/{FLAGS.act_bits} | {FLAGS.method} | {fp_top1:.2f} | "
          f"{q_top1:.2f} | {report['ptq_time_s']:.0f} |")


def main(argv):
    del argv
    try:
        run()
    except (ValueError, TypeError, OSError) as err:
        print(f"ptq.py: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
