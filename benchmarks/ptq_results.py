"""PTQ results on mnist5k: RTN / AdaRound / BRECQ / QDrop / MRECG at several bit widths.

CPU-sized protocol (documented in docs/ptq.md and in the Markdown header): inputs resized to
``--image_size`` (16 px, small-image layouts), FP models trained ``--epochs`` epochs with Adam once
and saved to ``--fp_dir`` (reused by later runs), ``--calib`` calibration images, ``--iters``
reconstruction steps per unit (per W/A setting) of ``--batch`` samples. ``mrecg_loss`` reuses the
QDrop pass of the same setting as its search pass (``baseline_losses=``; search time = that pass's
time). Observer calibration is identical for every method of one (model, W/A) setting, so it runs
once per setting and its qparams are restored for the other methods (``--cache_calib``); the
reported PTQ time excludes it (its time is listed separately).
Writes benchmarks/results/ptq_results.{json,md} after every run.

    python benchmarks/ptq_results.py --models resnet18 --bits 2/4,3/3,4/4 \
        --iters 2/4:100,3/3:100,4/4:60 [--extra repvgg_a0:4/4:rtn,qdrop]
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
from repq.ptq.qmodel import QuantModel  # noqa: E402

flags.DEFINE_string("models", "resnet18", "comma-separated model names")
flags.DEFINE_string("bits", "2/4,3/3,4/4", "comma-separated W/A settings (run in this order)")
flags.DEFINE_string("methods", "rtn,adaround,brecq,qdrop,mrecg_loss,mrecg_modcap", "methods")
flags.DEFINE_string("iters", "100", "reconstruction steps per unit: an int, or 'W/A:n,...' per setting")
flags.DEFINE_integer("calib", 256, "calibration images")
flags.DEFINE_integer("batch", 16, "samples per reconstruction step")
flags.DEFINE_integer("image_size", 16, "input side (mnist5k resized)")
flags.DEFINE_integer("epochs", 4, "FP training epochs (Adam 1e-3, batch 64)")
flags.DEFINE_string("fp_dir", "runs/ptq_fp", "FP checkpoints <model>_<size>px_<epochs>ep.keras (trained once)")
flags.DEFINE_boolean("cache_calib", True, "calibrate observers once per (model, W/A) and reuse the qparams")
flags.DEFINE_string("extra", "", "extra model:bits:methods run, e.g. repvgg_a0:4/4:rtn,qdrop ('' for none)")
flags.DEFINE_string("output", "benchmarks/results/ptq_results", "output path without extension")
flags.DEFINE_string("merge", "", "comma-separated result .json files to combine into --output (no runs; "
                    "rows ordered by --bits; --iters should describe the combined protocol)")
FLAGS = flags.FLAGS

MODEL_KWARGS = {"mobilenetv2": {"width_multiplier": 0.5}}
ORDER = ("mrecg_loss", "qdrop", "brecq", "adaround", "rtn")  # SPEC Part C §7 (MRECG >= ... >= RTN)


# ---------------------------------------------------------------- calibration cache
class CalibCache:
    """Wraps ``QuantModel.calibrate``: the first call of a key runs the observers, later calls
    restore the stored act/weight steps (same model, data and bits -> same steps)."""

    def __init__(self):
        self.key, self.store, self.seconds = None, {}, {}
        self.original = QuantModel.calibrate
        cache = self

        def calibrate(qm, batches, verbose=0):
            key = cache.key
            if key is None:
                return cache.original(qm, batches, verbose)
            if key not in cache.store:
                start = time.perf_counter()
                cache.original(qm, batches, verbose)
                cache.seconds[key] = time.perf_counter() - start
                cache.store[key] = qm.model.get_weights()  # steps, ranges: all the calibration sets
                return None
            qm.model.set_weights(cache.store[key])
            return None

        QuantModel.calibrate = calibrate


def iters_for(bits):
    spec = FLAGS.iters
    if ":" not in spec:
        return int(spec)
    table = dict(item.split(":") for item in spec.split(","))
    return int(table[bits])


def load_or_train(model_name, size):
    import keras

    from repq import models

    path = os.path.join(FLAGS.fp_dir, f"{model_name}_{size}px_{FLAGS.epochs}ep.keras")
    if os.path.exists(path):
        return models.set_registry_name(keras.saving.load_model(path), model_name), path, None
    start = time.perf_counter()
    model = train_fp_model(model_name, epochs=FLAGS.epochs, image_size=size, verbose=2,
                           **MODEL_KWARGS.get(model_name, {}))
    os.makedirs(FLAGS.fp_dir, exist_ok=True)
    model.save(path)
    return model, path, time.perf_counter() - start


def ordering(rows, model, bits):
    """SPEC §7 ordering check on top-1 for one (model, bits): list of (a, b, holds)."""
    top = {r["method"]: r["top1"] for r in rows if r["model"] == model and r["bits"] == bits}
    checks = []
    for a, b in zip(ORDER, ORDER[1:]):
        if a in top and b in top:
            checks.append((a, b, top[a] >= top[b]))
    if "mrecg_modcap" in top and "qdrop" in top:
        checks.append(("mrecg_modcap", "qdrop", top["mrecg_modcap"] >= top["qdrop"]))
    return checks


def write(rows, fp, meta):
    with open(FLAGS.output + ".json", "w") as f:
        json.dump({"meta": meta, "fp_top1": fp, "runs": rows}, f, indent=1)
    lines = [f"# PTQ on mnist5k ({meta['protocol']})", "",
             "Written by `" + meta["command"] + "`.", "",
             "Reduced CPU protocol (2 shared cores), far below the paper's 20,000 iterations/unit, "
             "1,024 calibration images and 224 px ImageNet: " + meta["protocol"] + ". "
             "Top-1 on the 1,000 mnist5k test digits (0.1 % granularity, so differences of a few "
             "tenths are noise). Observer calibration runs once per setting, in its first method "
             "(RTN, whose PTQ time is therefore the calibration time); the other methods reuse its "
             "qparams and their PTQ time excludes it, and for `mrecg_loss` also the reused QDrop "
             "search pass (`search (s)`). Σ L_rec sums the method's own units (21 layer units for "
             "AdaRound, 10 blocks for BRECQ/QDrop, 8 groups for MRECG), so it is comparable only "
             "within a method: it shows how much reconstruction lowered the loss from round-to-nearest.", ""]
    lines += ["| model | FP top-1 (%) | FP checkpoint |", "|---|---|---|"]
    lines += [f"| {m} | {v:.2f} | `{meta['fp_paths'][m]}` |" for m, v in fp.items()]
    lines += ["", "| model | W/A | iters/unit | method | top-1 (%) | Δ vs FP | Σ L_rec (RTN init → final) "
              "| PTQ time (s) | search (s) | scheme |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        loss = (f"{sum(r['unit_losses_init']):.3g} → {sum(r['unit_losses']):.3g}"
                if r["unit_losses"] else "")
        search = f"{r['search_time_s']:.0f}" if r["search_time_s"] is not None else ""
        lines.append(f"| {r['model']} | {r['bits']} | {r['iters'] if r['method'] != 'rtn' else '—'} | "
                     f"{r['method']} | {r['top1']:.2f} | {r['top1'] - fp[r['model']]:+.2f} | {loss} | "
                     f"{r['ptq_time_s']:.0f} | {search} | {r['scheme'] or ''} |")
    if meta.get("calib_seconds"):
        lines += ["", "Observer calibration (once per setting): " + ", ".join(
            f"{k} {v:.0f} s" for k, v in meta["calib_seconds"].items()) + "."]
    lines += ["", "## SPEC Part C §7 ordering (MRECG ≥ QDrop ≥ BRECQ ≥ AdaRound ≥ RTN, top-1)", ""]
    seen = []
    for r in rows:
        if (r["model"], r["bits"]) not in seen:
            seen.append((r["model"], r["bits"]))
    for model, bits in seen:
        checks = ordering(rows, model, bits)
        if checks:
            held = sum(c[2] for c in checks)
            text = "; ".join(f"{a} ≥ {b}: {'yes' if ok else 'NO'}" for a, b, ok in checks)
            lines.append(f"* {model} W{bits.replace('/', 'A')}: {held}/{len(checks)} pairs hold — {text}")
    with open(FLAGS.output + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


def merge(paths):
    parts = [json.load(open(p)) for p in paths]
    order = FLAGS.bits.split(",")
    rows = sorted((r for d in parts for r in d["runs"]),
                  key=lambda r: (r["model"], order.index(r["bits"]) if r["bits"] in order else len(order)))
    meta = dict(parts[0]["meta"])
    meta["command"] = "`; `".join(d["meta"]["command"] for d in parts)
    meta["iters"] = FLAGS.iters
    meta["protocol"] = meta["protocol"].split(", iters/unit")[0] + (
        f", iters/unit {FLAGS.iters}, batch {meta['batch']}, seed 0")
    for d in parts[1:]:
        for key in ("fp_paths", "fp_train_s", "calib_seconds"):
            meta[key].update(d["meta"][key])
    fp = {k: v for d in parts for k, v in d["fp_top1"].items()}
    write(rows, fp, meta)


def main(_):
    import tensorflow as tf

    if FLAGS.merge:
        return merge(FLAGS.merge.split(","))

    size = FLAGS.image_size
    test = resized(get_dataset("mnist5k", "test", 250)[0], size)
    calib = calibration_batches("mnist5k", FLAGS.calib, FLAGS.calib)
    calib = [tf.image.resize(b, (size, size)).numpy() for b in calib]
    plan = [(m, b, FLAGS.methods.split(",")) for m in FLAGS.models.split(",") if m
            for b in FLAGS.bits.split(",")]
    if FLAGS.extra:
        model, bits, methods = FLAGS.extra.split(":")
        plan.append((model, bits, methods.split(",")))
    cache = CalibCache() if FLAGS.cache_calib else None
    meta = {"protocol": f"{size}x{size} inputs, FP {FLAGS.epochs} epochs Adam, {FLAGS.calib} calibration "
                        f"images, iters/unit {FLAGS.iters}, batch {FLAGS.batch}, seed 0",
            "command": "python benchmarks/ptq_results.py " + " ".join(sys.argv[1:]),
            "iters": FLAGS.iters, "calib": FLAGS.calib, "batch": FLAGS.batch, "image_size": size,
            "epochs": FLAGS.epochs, "fp_paths": {}, "fp_train_s": {}, "calib_seconds": {}}
    rows, fp, fp_models = [], {}, {}
    for model_name, bits, methods in plan:
        if model_name not in fp_models:
            model, path, train_s = load_or_train(model_name, size)
            fp_models[model_name] = model
            fp[model_name] = top1_accuracy(model, test)
            meta["fp_paths"][model_name], meta["fp_train_s"][model_name] = path, train_s
            print(f"{model_name}: FP top-1 {fp[model_name]:.2f} ({path})", flush=True)
        w, a = (int(v) for v in bits.split("/"))
        iters = iters_for(bits)
        qdrop_report = None
        for method in methods:
            extra = {}
            if method == "mrecg_loss" and qdrop_report is not None:
                extra["baseline_losses"] = qdrop_report["unit_losses"]
            if cache is not None:
                cache.key = (model_name, bits)
            qmodel, report = quantize_ptq(fp_models[model_name], calib, method, w, a, iters=iters,
                                          batch_size=FLAGS.batch, verbose=0, **extra)
            if cache is not None and cache.key in cache.seconds:
                meta["calib_seconds"][f"{model_name} W{w}A{a}"] = cache.seconds[cache.key]
            if method == "qdrop":
                qdrop_report = report
            if "baseline_losses" in extra:
                report["search_time_s"] = qdrop_report["ptq_time_s"]
            top1 = top1_accuracy(qmodel, test)
            row = {"model": model_name, "bits": bits, "method": method, "iters": iters, "top1": top1,
                   "ptq_time_s": report["ptq_time_s"], "scheme": str(report["scheme"]) if report["scheme"] else None,
                   "search_time_s": report["search_time_s"], "units": report["units"],
                   "unit_losses": report["unit_losses"], "unit_losses_init": report["unit_losses_init"],
                   "baseline_unit_losses": report["baseline_unit_losses"],
                   "unit_seconds": report["unit_seconds"], "iters_per_s": report["iters_per_s"]}
            rows.append(row)
            print(f"{model_name} W{w}A{a} {method}: {top1:.2f} ({report['ptq_time_s']:.0f} s) "
                  f"{row['scheme'] or ''}", flush=True)
            write(rows, fp, meta)


if __name__ == "__main__":
    app.run(main)
