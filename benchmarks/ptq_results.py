"""PTQ results on mnist5k: RTN / AdaRound / BRECQ / QDrop / MRECG at several bit widths.

CPU-sized protocol (documented in docs/ptq.md): inputs resized to ``--image_size`` (16 px,
small-image layouts), FP models trained ``--epochs`` epochs with Adam, ``--calib`` calibration
images, ``--iters`` reconstruction steps per unit of ``--batch`` samples. ``mrecg_loss`` reuses the
QDrop pass of the same setting as its search pass (search time = that pass's time).
Writes benchmarks/results/ptq_results.{json,md} after every run.

    python benchmarks/ptq_results.py [--iters 40] [--models resnet18,mobilenetv2]
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from repq.data import calibration_batches, get_dataset  # noqa: E402
from repq.ptq.driver import quantize_ptq  # noqa: E402
from repq.ptq.fp_baseline import resized, top1_accuracy, train_fp_model  # noqa: E402

flags.DEFINE_string("models", "resnet18,mobilenetv2", "comma-separated model names")
flags.DEFINE_string("bits", "4/4,3/3,2/4", "comma-separated W/A settings")
flags.DEFINE_string("methods", "rtn,adaround,brecq,qdrop,mrecg_modcap,mrecg_loss", "methods")
flags.DEFINE_integer("iters", 40, "reconstruction steps per unit")
flags.DEFINE_integer("calib", 256, "calibration images")
flags.DEFINE_integer("batch", 16, "samples per reconstruction step")
flags.DEFINE_integer("image_size", 16, "input side (mnist5k resized)")
flags.DEFINE_integer("epochs", 2, "FP training epochs")
flags.DEFINE_string("extra", "repvgg_a0:4/4:rtn,qdrop", "extra model:bits:methods runs ('' for none)")
flags.DEFINE_string("output", "benchmarks/results/ptq_results", "output path without extension")
FLAGS = flags.FLAGS

MODEL_KWARGS = {"mobilenetv2": {"width_multiplier": 0.5}}


def write(rows, fp, meta):
    with open(FLAGS.output + ".json", "w") as f:
        json.dump({"meta": meta, "fp_top1": fp, "runs": rows}, f, indent=1)
    lines = [f"# PTQ on mnist5k ({meta['protocol']})", "",
             "| model | W/A | method | top-1 (%) | FP top-1 | PTQ time (s) | scheme |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bits']} | {r['method']} | {r['top1']:.2f} | "
                     f"{fp[r['model']]:.2f} | {r['ptq_time_s']:.0f} | {r['scheme'] or ''} |")
    with open(FLAGS.output + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


def main(_):
    size = FLAGS.image_size
    test = resized(get_dataset("mnist5k", "test", 250)[0], size)
    calib = [resized_batch for resized_batch in calibration_batches("mnist5k", FLAGS.calib, FLAGS.calib)]
    import tensorflow as tf
    calib = [tf.image.resize(b, (size, size)).numpy() for b in calib]
    plan = [(m, b, FLAGS.methods.split(",")) for m in FLAGS.models.split(",") for b in FLAGS.bits.split(",")]
    if FLAGS.extra:
        model, bits, methods = FLAGS.extra.split(":")
        plan.append((model, bits, methods.split(",")))
    meta = {"protocol": f"{size}x{size} inputs, {FLAGS.epochs} FP epochs, {FLAGS.calib} calibration "
                        f"images, {FLAGS.iters} iters/unit, batch {FLAGS.batch}",
            "iters": FLAGS.iters, "calib": FLAGS.calib, "batch": FLAGS.batch, "image_size": size}
    rows, fp, fp_models = [], {}, {}
    for model_name, bits, methods in plan:
        if model_name not in fp_models:
            start = time.perf_counter()
            fp_models[model_name] = train_fp_model(model_name, epochs=FLAGS.epochs, image_size=size,
                                                   verbose=0, **MODEL_KWARGS.get(model_name, {}))
            fp[model_name] = top1_accuracy(fp_models[model_name], test)
            print(f"{model_name}: FP top-1 {fp[model_name]:.2f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
        w, a = (int(v) for v in bits.split("/"))
        qdrop_report = None
        for method in methods:
            extra = {}
            if method == "mrecg_loss" and qdrop_report is not None:
                extra["baseline_losses"] = qdrop_report["unit_losses"]
            qmodel, report = quantize_ptq(fp_models[model_name], calib, method, w, a, iters=FLAGS.iters,
                                          batch_size=FLAGS.batch, verbose=0, **extra)
            if method == "qdrop":
                qdrop_report = report
            if "baseline_losses" in extra:
                report["search_time_s"] = qdrop_report["ptq_time_s"]
            top1 = top1_accuracy(qmodel, test)
            row = {"model": model_name, "bits": bits, "method": method, "top1": top1,
                   "ptq_time_s": report["ptq_time_s"], "scheme": str(report["scheme"]) if report["scheme"] else None,
                   "search_time_s": report["search_time_s"], "units": report["units"],
                   "unit_losses": report["unit_losses"], "unit_losses_init": report["unit_losses_init"],
                   "iters_per_s": report["iters_per_s"]}
            rows.append(row)
            print(f"{model_name} W{w}A{a} {method}: {top1:.2f} ({report['ptq_time_s']:.0f} s) "
                  f"{row['scheme'] or ''}", flush=True)
            write(rows, fp, meta)


if __name__ == "__main__":
    app.run(main)
