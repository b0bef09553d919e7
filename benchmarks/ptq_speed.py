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
  sizes ``--calib_sizes`` (ResNet-18) and for models of different depth (``--depth_models``) at the
  smallest size, split into observers (calibration), optimisation (steady steps), tracing (first
  step of every unit that traced its step; units of one signature share a trace), caching (carrying
  unit inputs/targets forward, :mod:`repq.ptq.carry`) and other (reparametrization, evaluation).
  Per unit: cumulative time and caching time against the unit index (linear in depth = the
  caching time per unit does not grow with the index).
* Goal (issue 15): the non-optimisation share of a ``--goal_iters`` iterations/unit run, projected
  for every scaling run from its measured parts (steady it/s per unit) and measured for
  ``--goal_models`` at that iteration count; ``--mrecg_model``: the time of ``mrecg_loss``
  (search pass + merged pass) against its BRECQ depth run.

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

from benchmarks.provenance import markdown_header, provenance  # noqa: E402

flags.DEFINE_integer("image_size", 16, "input side")
flags.DEFINE_integer("batch", 16, "samples per reconstruction step")
flags.DEFINE_integer("unit_calib", 64, "calibration images for the unit-type measurements")
flags.DEFINE_string("blocks", "2,5,7", "BRECQ unit indices of ResNet-18 to measure (1..7); '' skips")
flags.DEFINE_integer("steps", 10, "reconstruction steps per measured unit (the first is left out)")
flags.DEFINE_string("calib_sizes", "64,128,256", "calibration sizes for the scaling runs")
flags.DEFINE_integer("scale_iters", 5, "steps per unit in the scaling runs")
flags.DEFINE_string("depth_models", "resnet18,mobilenetv2_w0.35,repvgg_a0", "models for the depth runs")
flags.DEFINE_integer("goal_iters", 200, "iterations/unit of the overhead goal")
flags.DEFINE_string("goal_models", "resnet18", "models measured at --goal_iters (smallest calib size); '' skips")
flags.DEFINE_string("mrecg_model", "resnet18", "model whose mrecg_loss time is measured; '' skips")
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
                   "weights": int(sum(np.prod(qm.weight_layers[op.index].layer.kernel.shape)
                                      for u in members[kind] for op in u.weight_ops)),
                   "iters_per_s": 1.0 / sec_per_iter, "ms_per_iter": 1000 * sec_per_iter,
                   "trace_s": trace, "peak_rss_delta_mb": mem}
            out["unit_types"].append(row)
            print(f"{block.name} {kind}: {row['iters_per_s']:.1f} it/s, trace {trace:.1f} s, "
                  f"+{mem:.0f} MiB", flush=True)
            write(out)


def scaling_run(name, data, n, out, key, iters=None, method="brecq"):
    import repq.ptq.qmodel as qmodel_mod
    from repq.ptq.driver import quantize_ptq

    iters = iters or FLAGS.scale_iters
    model = build(name, FLAGS.image_size)
    calib_time = []
    original = qmodel_mod.QuantModel.calibrate

    def timed(qm, batches, verbose=0):
        start = time.perf_counter()
        original(qm, batches, verbose)
        calib_time.append(time.perf_counter() - start)

    qmodel_mod.QuantModel.calibrate = timed
    try:
        with PeakRSS() as mem:
            _, report = quantize_ptq(model, data[:n], method, 4, 4, iters=iters, batch_size=FLAGS.batch,
                                     topk=2, verbose=0)
    finally:
        qmodel_mod.QuantModel.calibrate = original
    trace = sum(f for f, t in zip(report["unit_first_step_s"], report["unit_traced"]) if t)
    loops, caching = sum(report["unit_seconds"]), sum(report["unit_cache_s"])
    unit_wall = [a + b for a, b in zip(report["unit_seconds"], report["unit_cache_s"])]
    # a kept MRECG search pass (no merge) is the final pass: its units are in loops/caching already
    search = (report["search_time_s"] or 0.0) - (loops + caching if report.get("search_pass_kept") else 0.0)
    row = {"model": name, "method": method, "calib": n, "units": len(report["units"]), "iters": iters,
           "total_s": report["ptq_time_s"], "calibration_s": calib_time[0], "steps_s": loops - trace,
           "trace_s": trace, "caching_s": caching, "search_s": search,
           "search_pass_kept": bool(report.get("search_pass_kept")),
           "other_s": report["ptq_time_s"] - calib_time[0] - loops - caching - search,
           "traced_units": sum(report["unit_traced"]),
           "unit_cache_s": report["unit_cache_s"], "unit_wall_s": unit_wall,
           "unit_carry_mb": report["unit_carry_mb"], "peak_carry_mb": max(report["unit_carry_mb"]),
           "peak_rss_delta_mb": mem.delta, "maxrss_mb": maxrss_mb()}
    row.update(projected(report, row))
    out[key].append(row)
    print(f"{key} {name} {method} calib {n} iters {iters}: {row['total_s']:.0f} s ({row['units']} units, "
          f"{row['traced_units']} traced), caching {caching:.1f} s, +{mem.delta:.0f} MiB", flush=True)
    write(out)


def projected(report, row):
    """Total and non-optimisation share of the same run at ``--goal_iters`` iterations/unit: the
    optimisation steps scale with the steady it/s of each unit, every other part stays."""
    goal = FLAGS.goal_iters
    if row["search_s"]:  # the search pass would scale too; its steps are not reported per unit
        return {"goal_total_s": None, "goal_overhead": None}
    steps = sum((goal - 1) / rate + (0.0 if traced else 1.0 / rate)
                for rate, traced in zip(report["iters_per_s"], report["unit_traced"]))
    fixed = row["total_s"] - row["steps_s"]
    return {"goal_total_s": fixed + steps, "goal_overhead": fixed / (fixed + steps)}


def write(out, update_rss=True):
    if update_rss:
        out["maxrss_mb"] = maxrss_mb()
    with open(FLAGS.output + ".json", "w") as f:
        json.dump(out, f, indent=1)
    m = out["meta"]
    lines = ["# PTQ reconstruction speed and memory (CPU)", "", markdown_header(out["provenance"]),
             f"Machine: {m['machine']}. Random-initialised models, "
             f"{m['image_size']}x{m['image_size']} inputs, batch {m['batch']}, W4A4.", "",
             f"Method: steady-state it/s over steps 2..{m['steps']} of `reconstruct_unit` on a cached "
             "unit (the first step traces the `tf.function`; its time is `first step (s)`). Memory: peak of the process RSS "
             "sampled every 10 ms from /proc/self/statm minus the RSS just before the measurement "
             "(in-process: memory kept by the allocator from earlier steps can hide part of a later "
             "delta); tracemalloc is not used because it misses TensorFlow's C++ buffers. "
             f"Process ru_maxrss at the end: {out['maxrss_mb']:.0f} MiB."
             + (f" Wall time of the whole script: {out['wall_s']:.0f} s." if out.get("wall_s") else "")]
    if out["unit_types"]:
        lines += ["", "## Iterations per second by unit type (ResNet-18)", "",
                  "Same weights reconstructed three ways: each conv of the block as its own AdaRound "
                  "layer unit (time per iteration summed over the layers), the block as one BRECQ unit, "
                  "the block merged with the next block (MRECG group, weights of both).", "",
                  "| block | unit type | units | weights | it/s | ms/iter | first step (s) | peak RSS Δ (MiB) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in out["unit_types"]:
            lines.append(f"| {r['block']} | {r['kind']} | {len(r['units'])} | {r['weights']:,} | "
                         f"{r['iters_per_s']:.1f} | {r['ms_per_iter']:.0f} | {r['trace_s']:.1f} | "
                         f"{r['peak_rss_delta_mb']:.0f} |")
    parts = ("observers = activation/weight observer calibration; steps = optimisation steps after "
             "the first; trace = first step of each unit that traced its step function (the others "
             "reuse the trace of an earlier unit of the same signature); caching = carrying the unit "
             "inputs/targets forward through the unit's ops (quantized and FP); other = "
             "reparametrization, building the quantized model and the per-signature workspaces, "
             "evaluating each unit's loss; search = MRECG-loss's first (QDrop) pass, all parts (only the selection "
             "when that pass is kept as the final one). Projected: the same run at "
             f"{m['goal_iters']} iterations/unit (steps from each unit's steady it/s, every other part "
             "as measured); overhead = non-step share.")
    lines += ["", "## Total PTQ time and its parts", "", parts]
    for key, title in (("calib_scaling", "Total PTQ time vs calibration size (ResNet-18, BRECQ)"),
                       ("depth_scaling", "Total PTQ time vs model depth (BRECQ)"),
                       ("goal_runs", f"Measured at {m['goal_iters']} iterations/unit (BRECQ)"),
                       ("mrecg_runs", "MRECG-loss (QDrop search pass + merged pass; one pass when it merges nothing) vs BRECQ")):
        if not out.get(key):
            continue
        lines += ["", f"### {title}", "",
                  "| model | method | calib | units (traced) | it/unit | total (s) | observers (s) | steps (s) "
                  "| trace (s) | caching (s) | search (s) | other (s) | overhead | projected total / overhead "
                  "| peak carried (MiB) | peak RSS Δ (MiB) |", "|" + "---|" * 16]
        for r in out[key]:
            overhead = 1 - r["steps_s"] / r["total_s"]
            goal = (f"{r['goal_total_s']:.0f} s / {r['goal_overhead']:.0%}" if r["goal_total_s"] is not None
                    else "—")
            lines.append(f"| {r['model']} | {r['method']} | {r['calib']} | {r['units']} ({r['traced_units']}) | "
                         f"{r['iters']} | {r['total_s']:.1f} | {r['calibration_s']:.1f} | {r['steps_s']:.1f} | "
                         f"{r['trace_s']:.1f} | {r['caching_s']:.1f} | {r['search_s']:.1f} | {r['other_s']:.1f} | "
                         f"{overhead:.0%} | "
                         f"{goal} | {r['peak_carry_mb']:.1f} | "
                         f"{r['peak_rss_delta_mb']:.0f} |")
    brecq = {(r["model"], r["calib"], r["iters"]): r for r in out.get("depth_scaling", [])}
    for r in out.get("mrecg_runs", []):
        base = brecq.get((r["model"], r["calib"], r["iters"]))
        if base:
            lines += ["", f"{r['model']}: mrecg_loss {r['total_s']:.1f} s = {r['total_s'] / base['total_s']:.2f}x "
                      f"the BRECQ run ({base['total_s']:.1f} s); its search (the QDrop pass) "
                      f"{r['search_s']:.1f} s."]
    lines += ["", "## Per unit (depth runs)", "",
              "Caching seconds per unit against the unit index: with the activations carried forward "
              "they stay flat (the earlier prefix recompute grew with the index).", "",
              "| model | caching s per unit (unit 1, 2, ...) |", "|---|---|"]
    for r in out.get("depth_scaling", []):
        lines.append(f"| {r['model']} | {', '.join(f'{v:.2f}' for v in r['unit_cache_s'])} |")
    with open(FLAGS.output + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(out)


def plot(out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
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
    if kinds:
        axes[0].legend(fontsize=7)
    axes[0].set_title("it/s by unit type (ResNet-18)")
    parts = ("calibration_s", "steps_s", "trace_s", "caching_s", "other_s")  # no search: BRECQ runs
    cs = out["calib_scaling"]
    if cs:
        x = [r["calib"] for r in cs]
        axes[1].plot(x, [r["total_s"] for r in cs], "ko-", label="total")
        for part in parts:
            axes[1].plot(x, [r[part] for r in cs], "o-", label=part[:-2])
        axes[1].set_xlabel("calibration images")
        axes[1].set_ylabel("seconds")
        axes[1].legend(fontsize=7)
        axes[1].set_title(f"BRECQ PTQ time, ResNet-18, {out['meta']['scale_iters']} it/unit")
    for r in out["depth_scaling"]:
        cum = [sum(r["unit_wall_s"][:k + 1]) for k in range(r["units"])]
        axes[2].plot(range(1, r["units"] + 1), cum, "o-", label=f"{r['model']} (all parts)")
        cache = [sum(r["unit_cache_s"][:k + 1]) for k in range(r["units"])]
        axes[3].plot(range(1, r["units"] + 1), cache, "o-", label=r["model"])
    for ax, what in ((axes[2], "cumulative reconstruction s"), (axes[3], "cumulative caching s")):
        ax.set_xlabel("units done")
        ax.set_ylabel(what)
        if out["depth_scaling"]:
            ax.legend(fontsize=7)
            ax.set_title(f"{what} vs depth (calib {out['depth_scaling'][0]['calib']})", fontsize=9)
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
    out = {"provenance": provenance(),
           "meta": {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared with other jobs)",
                    "image_size": FLAGS.image_size, "batch": FLAGS.batch, "steps": FLAGS.steps,
                    "scale_iters": FLAGS.scale_iters, "unit_calib": FLAGS.unit_calib,
                    "goal_iters": FLAGS.goal_iters},
           "unit_types": [], "calib_scaling": [], "depth_scaling": [], "goal_runs": [], "mrecg_runs": []}
    start = time.perf_counter()
    if FLAGS.blocks:
        unit_types(data, out)
    for n in sizes:
        scaling_run("resnet18", data, n, out, "calib_scaling")
    for name in FLAGS.depth_models.split(","):
        if name == "resnet18" and out["calib_scaling"] and out["calib_scaling"][0]["calib"] == sizes[0]:
            out["depth_scaling"].append(dict(out["calib_scaling"][0]))
            continue
        scaling_run(name, data, sizes[0], out, "depth_scaling")
    if FLAGS.mrecg_model:
        scaling_run(FLAGS.mrecg_model, data, sizes[0], out, "mrecg_runs", method="mrecg_loss")
    for name in filter(None, FLAGS.goal_models.split(",")):
        scaling_run(name, data, sizes[0], out, "goal_runs", iters=FLAGS.goal_iters)
    out["wall_s"] = time.perf_counter() - start
    write(out)
    print(f"done in {out['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    app.run(main)
