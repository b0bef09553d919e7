"""PTQ reconstruction speed and memory on CPU: iterations/s per unit type, peak memory, and how the
total PTQ time grows with the calibration size and the model depth.

* Unit types (ResNet-18, small-image layout, ``--image_size`` px): for a few BasicBlocks, the same
  weights reconstructed as AdaRound layer units (each conv alone, activation steps fixed), as one
  BRECQ block unit (steps learned) and as an MRECG merged group (the block + the next one, QDrop
  p = 0.5). Steady-state it/s = the ``iters_per_s`` of ``reconstruct_unit`` (``--steps`` steps; the
  first step, which traces the ``tf.function``, is left out and reported as ``first step (s)``).
* Memory: a thread samples the process RSS (``/proc/self/statm``) every 10 ms; ``peak_rss_delta_mb``
  = peak RSS during the measurement minus RSS right before it (in-process, so memory the allocator
  kept from earlier measurements can hide part of a later delta). ``ru_maxrss`` (getrusage) of the
  whole process is reported too. tracemalloc is not used: it only sees Python allocations, not
  TensorFlow's C++ buffers that hold the cached unit inputs/targets.
* Scaling: ``quantize_ptq(..., "brecq", W4A4, iters=--scale_iters)`` total time for calibration
  sizes ``--calib_sizes`` (ResNet-18) and for models of different depth at the smallest size,
  split into observer calibration, optimisation steps and the rest (caching unit inputs from the
  quantized prefix, tracing).

Random-initialised models (speed does not depend on training). Writes
benchmarks/results/ptq_speed.{json,md,png} after every stage.

    python benchmarks/ptq_speed.py [--image_size 16] [--batch 16]
"""

import json
import os
import resource
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("image_size", 16, "input side")
flags.DEFINE_integer("batch", 16, "samples per reconstruction step")
flags.DEFINE_integer("unit_calib", 64, "calibration images for the unit-type measurements")
flags.DEFINE_string("blocks", "2,5,7", "BRECQ unit indices of ResNet-18 to measure (1..7)")
flags.DEFINE_integer("steps", 10, "reconstruction steps per measured unit (the first is left out)")
flags.DEFINE_string("calib_sizes", "64,128,256", "calibration sizes for the scaling runs")
flags.DEFINE_integer("scale_iters", 5, "steps per unit in the scaling runs")
flags.DEFINE_string("depth_models", "resnet18,mobilenetv2_w0.35,repvgg_a0", "models for the depth runs")
flags.DEFINE_string("output", "benchmarks/results/ptq_speed", "output path without extension")
flags.DEFINE_boolean("render_only", False, "re-write the .md/.png from the existing .json (no runs)")
FLAGS = flags.FLAGS

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class PeakRSS:
    """Context manager: ``delta`` = peak sampled RSS during the block minus RSS at entry (MiB)."""

    def __enter__(self):
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        self.delta = self.peak - self.base


def build(name, size):
    from repq import models

    kwargs = {}
    if name.startswith("mobilenetv2_w"):
        kwargs["width_multiplier"] = float(name.split("_w")[1])
        name = "mobilenetv2"
    return models.create_model(name, num_classes=10, input_shape=(size, size, 3), **kwargs)


def steady_rate(qm, unit, cache, config_kw):
    """(steady it/s, first-step s incl. tracing, peak RSS delta MiB) of one unit."""
    from repq.ptq.reconstruct import ReconConfig, reconstruct_unit

    with PeakRSS() as mem:
        r = reconstruct_unit(qm, unit, cache, ReconConfig(iters=FLAGS.steps, verbose=0, **config_kw))
    return r["iters_per_s"], r["first_step_s"], mem.delta


def unit_types(data, out):
    import numpy as np

    from repq import reparametrize
    from repq.ptq.driver import as_batches
    from repq.ptq.qmodel import QuantModel
    from repq.ptq.reconstruct import cache_unit
    from repq.ptq.units import block_units, layer_units, make_unit

    model = build("resnet18", FLAGS.image_size)
    qm = QuantModel(reparametrize(model), 4, 4)
    batches = as_batches(data[:FLAGS.unit_calib], FLAGS.batch)
    qm.calibrate(batches)
    blocks, layers = block_units(qm.graph), layer_units(qm.graph)
    kinds = {"layer (AdaRound)": dict(prob=1.0, learn_scales=False),
             "block (BRECQ)": dict(prob=1.0, learn_scales=True),
             "merged group (MRECG, QDrop p=0.5)": dict(prob=0.5, learn_scales=True)}
    for b in (int(v) for v in FLAGS.blocks.split(",")):
        block = blocks[b]
        ids = {op.index for op in block.weight_ops}
        members = {"layer (AdaRound)": [u for u in layers if {op.index for op in u.weight_ops} <= ids],
                   "block (BRECQ)": [block],
                   "merged group (MRECG, QDrop p=0.5)": [make_unit(qm.graph, block.ops + blocks[b + 1].ops)]}
        for kind, config_kw in kinds.items():
            sec_per_iter, trace, mem, names = 0.0, 0.0, 0.0, []
            for unit in members[kind]:
                cache = cache_unit(qm, unit, batches, with_fp=config_kw["prob"] < 1.0)
                rate, tr, delta = steady_rate(qm, unit, cache, config_kw)
                del cache
                sec_per_iter += 1.0 / rate
                trace += tr
                mem = max(mem, delta)
                names.append(unit.name)
            row = {"block": block.name, "kind": kind, "units": names,
                   "weights": int(sum(np.prod(qm.weight_layers[op.index].kernel_shape)
                                      for u in members[kind] for op in u.weight_ops)),
                   "iters_per_s": 1.0 / sec_per_iter, "ms_per_iter": 1000 * sec_per_iter,
                   "trace_s": trace, "peak_rss_delta_mb": mem}
            out["unit_types"].append(row)
            print(f"{block.name} {kind}: {row['iters_per_s']:.1f} it/s, trace {trace:.1f} s, "
                  f"+{mem:.0f} MiB", flush=True)
            write(out)


def scaling_run(name, data, n, out, key):
    import repq.ptq.qmodel as qmodel_mod
    from repq.ptq.driver import quantize_ptq

    model = build(name, FLAGS.image_size)
    calib_time = []
    original = qmodel_mod.QuantModel.calibrate

    def timed(qm, batches):
        start = time.perf_counter()
        original(qm, batches)
        calib_time.append(time.perf_counter() - start)

    qmodel_mod.QuantModel.calibrate = timed
    try:
        with PeakRSS() as mem:
            _, report = quantize_ptq(model, data[:n], "brecq", 4, 4, iters=FLAGS.scale_iters,
                                     batch_size=FLAGS.batch, verbose=0)
    finally:
        qmodel_mod.QuantModel.calibrate = original
    steps = sum(report["unit_seconds"])
    row = {"model": name, "calib": n, "units": len(report["units"]), "iters": FLAGS.scale_iters,
           "total_s": report["ptq_time_s"], "calibration_s": calib_time[0], "steps_s": steps,
           "other_s": report["ptq_time_s"] - calib_time[0] - steps,
           "peak_rss_delta_mb": mem.delta, "maxrss_mb": maxrss_mb()}
    out[key].append(row)
    print(f"{key} {name} calib {n}: {row['total_s']:.0f} s ({row['units']} units), "
          f"+{mem.delta:.0f} MiB", flush=True)
    write(out)


def write(out, update_rss=True):
    if update_rss:
        out["maxrss_mb"] = maxrss_mb()
    with open(FLAGS.output + ".json", "w") as f:
        json.dump(out, f, indent=1)
    m = out["meta"]
    lines = ["# PTQ reconstruction speed and memory (CPU)", "",
             f"Written by `{m['command']}` on {m['machine']}. Random-initialised models, "
             f"{m['image_size']}x{m['image_size']} inputs, batch {m['batch']}, W4A4.", "",
             f"Method: steady-state it/s over steps 2..{m['steps']} of `reconstruct_unit` on a cached "
             "unit (the first step traces the `tf.function`; its time is `first step (s)`). Memory: peak of the process RSS "
             "sampled every 10 ms from /proc/self/statm minus the RSS just before the measurement "
             "(in-process: memory kept by the allocator from earlier steps can hide part of a later "
             "delta); tracemalloc is not used because it misses TensorFlow's C++ buffers. "
             f"Process ru_maxrss at the end: {out['maxrss_mb']:.0f} MiB."
             + (f" Wall time of the whole script: {out['wall_s']:.0f} s." if out.get("wall_s") else ""),
             "",
             "## Iterations per second by unit type (ResNet-18)", "",
             "Same weights reconstructed three ways: each conv of the block as its own AdaRound "
             "layer unit (time per iteration summed over the layers), the block as one BRECQ unit, "
             "the block merged with the next block (MRECG group, weights of both).", "",
             "| block | unit type | units | weights | it/s | ms/iter | first step (s) | peak RSS Δ (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["unit_types"]:
        lines.append(f"| {r['block']} | {r['kind']} | {len(r['units'])} | {r['weights']:,} | "
                     f"{r['iters_per_s']:.1f} | {r['ms_per_iter']:.0f} | {r['trace_s']:.1f} | "
                     f"{r['peak_rss_delta_mb']:.0f} |")
    for key, title in (("calib_scaling", "Total PTQ time vs calibration size (ResNet-18, BRECQ)"),
                       ("depth_scaling", "Total PTQ time vs model depth (BRECQ)")):
        lines += ["", f"## {title}", "",
                  f"`quantize_ptq(..., 'brecq', 4, 4, iters={m['scale_iters']})`; calibration = "
                  "observers, steps = optimisation loops (incl. their tracing), other = caching "
                  "unit inputs/targets from the quantized prefix and FP model, evaluation, "
                  "reparametrization.", "",
                  "| model | calib images | units | total (s) | calibration (s) | steps (s) | other (s) "
                  "| peak RSS Δ (MiB) |", "|---|---|---|---|---|---|---|---|"]
        for r in out[key]:
            lines.append(f"| {r['model']} | {r['calib']} | {r['units']} | {r['total_s']:.0f} | "
                         f"{r['calibration_s']:.0f} | {r['steps_s']:.0f} | {r['other_s']:.0f} | "
                         f"{r['peak_rss_delta_mb']:.0f} |")
    with open(FLAGS.output + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(out)


def plot(out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    rows = out["unit_types"]
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    width = 0.8 / max(len(kinds), 1)
    for j, kind in enumerate(kinds):
        vals = [next((r["iters_per_s"] for r in rows if r["block"] == b and r["kind"] == kind), 0)
                for b in blocks]
        axes[0].bar([i + j * width for i in range(len(blocks))], vals, width, label=kind)
    axes[0].set_xticks([i + width for i in range(len(blocks))])
    axes[0].set_xticklabels([b.split("..")[0].replace("_conv1", "") for b in blocks], fontsize=7)
    axes[0].set_ylabel("reconstruction it/s")
    axes[0].legend(fontsize=7)
    axes[0].set_title("it/s by unit type (ResNet-18)")
    cs = out["calib_scaling"]
    if cs:
        x = [r["calib"] for r in cs]
        for part in ("total_s", "calibration_s", "steps_s", "other_s"):
            axes[1].plot(x, [r[part] for r in cs], "o-", label=part[:-2])
        axes[1].set_xlabel("calibration images")
        axes[1].set_ylabel("seconds")
        axes[1].legend(fontsize=7)
        axes[1].set_title(f"BRECQ PTQ time, {out['meta']['scale_iters']} it/unit")
    ds = out["depth_scaling"]
    if ds:
        axes[2].bar(range(len(ds)), [r["total_s"] for r in ds])
        axes[2].set_xticks(range(len(ds)))
        axes[2].set_xticklabels([f"{r['model']}\n{r['units']} units" for r in ds], fontsize=7)
        axes[2].set_ylabel("seconds")
        axes[2].set_title(f"BRECQ PTQ time by model (calib {ds[0]['calib']})")
    fig.tight_layout()
    fig.savefig(FLAGS.output + ".png", dpi=110)
    plt.close(fig)


def main(_):
    import platform

    import tensorflow as tf

    from repq.data import calibration_batches

    if FLAGS.render_only:
        with open(FLAGS.output + ".json") as f:
            return write(json.load(f), update_rss=False)
    sizes = [int(v) for v in FLAGS.calib_sizes.split(",")]
    data = calibration_batches("mnist5k", max(sizes + [FLAGS.unit_calib]), 256)
    data = tf.image.resize(tf.concat(data, 0), (FLAGS.image_size, FLAGS.image_size)).numpy()
    out = {"meta": {"command": "python benchmarks/ptq_speed.py " + " ".join(sys.argv[1:]),
                    "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs)",
                    "image_size": FLAGS.image_size, "batch": FLAGS.batch, "steps": FLAGS.steps, "scale_iters": FLAGS.scale_iters, "unit_calib": FLAGS.unit_calib},
           "unit_types": [], "calib_scaling": [], "depth_scaling": []}
    start = time.perf_counter()
    unit_types(data, out)
    for n in sizes:
        scaling_run("resnet18", data, n, out, "calib_scaling")
    for name in FLAGS.depth_models.split(","):
        if name == "resnet18" and out["calib_scaling"] and out["calib_scaling"][0]["calib"] == sizes[0]:
            out["depth_scaling"].append(dict(out["calib_scaling"][0]))
            continue
        scaling_run(name, data, sizes[0], out, "depth_scaling")
    out["wall_s"] = time.perf_counter() - start
    write(out)
    print(f"done in {out['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    app.run(main)
