"""Training throughput with 1 replica (default strategy) vs 2 replicas (MirroredStrategy, 2 logical CPUs).

RepQ QAT RepVGG-A0 (small-image layout, 32x32x3, 10 classes, W4A4), ``model.fit`` on one fixed
random GLOBAL batch (same for both configurations; each of the 2 replicas gets half of it),
compiled and calibrated (``repq.calibrate``) under ``strategy.scope()`` as train.py does.

Every configuration runs in its own subprocess (this script re-invokes itself with
``--worker N``): a second ``MirroredStrategy`` in a process whose first one already ran
``fit`` fails with collective errors. Both workers are started once (build, calibrate,
compile, trace + warm-up fit), then the parent tells them in turn to run one timed ``fit``
of ``--steps`` steps (only one runs at a time; the other waits on its stdin): repetitions
are interleaved (1, 2, 1, 2, ...) so the load of the shared machine hits both alike. The
median samples/s of each is reported, with the paired ratios 2 replicas / 1 replica.

Caveat: the 2 replicas are 2 *logical* devices split from the same CPU (on this machine 2
cores, shared with other jobs); both replicas compete for the same cores and TF's intra-op
thread pool. This measures the overhead of the mirrored machinery (per-replica dispatch,
all-reduce of gradients and of synchronized BN moments), not multi-GPU scaling.

  python benchmarks/scaling.py [--reps 3] [--steps 3] [--warmup 1] [--batch 32]

Writes benchmarks/results/scaling.{json,md,png}.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "benchmarks", "results")
MARK = "SCALING_RESULT "


def worker(args):
    """One configuration in this process: print MARK + JSON of the timed fit."""
    t0 = time.perf_counter()
    import tensorflow as tf

    from repq.distribute import get_strategy
    if args.worker == 1:
        strategy = get_strategy("default")
    else:
        strategy = get_strategy("mirrored", num_cpu_devices=args.worker)
    import keras

    from repq import models
    import repq
    keras.utils.set_random_seed(0)
    x = tf.random.normal((args.batch, 32, 32, 3), seed=1)
    y = tf.random.uniform((args.batch,), 0, 10, tf.int32, seed=2)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    with strategy.scope():
        fp = models.create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3))
        model = repq.quantize_model(fp, args.bits, args.bits)
        repq.calibrate(model, x)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t1 = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=args.warmup, verbose=0)  # trace + warm up
    t2 = time.perf_counter()

    class Timer(keras.callbacks.Callback):
        """Wall time of the batches only (not fit's setup)."""
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.end = time.perf_counter()
    timer = Timer()
    print(MARK + json.dumps(dict(ready=True, setup_s=t1 - t0, warmup_s=t2 - t1)), flush=True)
    for command in sys.stdin:  # the parent interleaves the timed blocks of the configurations
        if command.strip() != "run":
            break
        model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0, callbacks=[timer])
        seconds = timer.end - timer.start
        print(MARK + json.dumps(dict(replicas=int(strategy.num_replicas_in_sync), steps=args.steps,
                                     seconds=seconds, samples_per_s=args.batch * args.steps / seconds,
                                     devices=[d.name for d in tf.config.list_logical_devices("CPU")])),
              flush=True)


def start_worker(n, args):
    """A worker process for `n` replicas, kept alive (setup and tracing once per configuration)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch), "--bits", str(args.bits)]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, bufsize=1)


def read_result(proc, n):
    for line in proc.stdout:
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"worker for {n} replica(s) exited (rc {proc.wait()}) without a result")


def run_block(proc, n):
    proc.stdin.write("run\n")
    proc.stdin.flush()
    return read_result(proc, n)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32, help="global batch (both configurations)")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args)
    if args.batch % 2:
        parser.error("--batch must be even (split over 2 replicas)")
    configs = (1, 2)
    runs = {n: [] for n in configs}
    procs = {n: start_worker(n, args) for n in configs}
    setup = {n: read_result(procs[n], n) for n in configs}
    for rep in range(args.reps):
        for n in configs:
            result = run_block(procs[n], n)
            runs[n].append(result)
            print(f"rep {rep}: {n} replica(s): {result['samples_per_s']:.1f} samples/s", flush=True)
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    med = {n: statistics.median(r["samples_per_s"] for r in runs[n]) for n in configs}
    ratios = [b["samples_per_s"] / a["samples_per_s"] for a, b in zip(runs[1], runs[2])]
    rows = [dict(replicas=n, strategy="default" if n == 1 else "MirroredStrategy (2 logical CPUs)",
                 per_replica_batch=args.batch // n, median_samples_per_s=med[n],
                 samples_per_s=[r["samples_per_s"] for r in runs[n]], ratio_to_1=med[n] / med[1])
            for n in configs]
    import tensorflow as tf
    from repq.training.artifacts import atomic_write, write_json, write_text
    meta = dict(model="repvgg_a0 (32x32x3, small layout), RepQ QAT", bits=args.bits, global_batch=args.batch,
                reps=args.reps, steps=args.steps, warmup_steps=args.warmup, cpu_count=os.cpu_count(),
                tensorflow=tf.__version__, worker_setup=setup, paired_ratios_2_over_1=ratios,
                median_paired_ratio=statistics.median(ratios),
                caveat="2 logical devices split from one shared 2-core CPU; not multi-GPU scaling")
    from benchmarks.provenance import markdown_header, provenance
    info = provenance()
    write_json(os.path.join(RESULTS, "scaling.json"), dict(provenance=info, meta=meta, rows=rows))
    lines = [markdown_header(info), f"RepQ QAT RepVGG-A0 32x32, W{args.bits}A{args.bits}, `model.fit`, global batch {args.batch}, "
             f"{os.cpu_count()} shared CPU cores, median of {args.reps} interleaved timed fits (one process per "
             "configuration) "
             f"x {args.steps} steps after {args.warmup} warm-up", "",
             "| replicas | strategy | batch / replica | samples/s (median) | ratio to 1 replica |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['replicas']} | {r['strategy']} | {r['per_replica_batch']} | {r['median_samples_per_s']:.1f} "
              f"| {r['ratio_to_1']:.2f} |" for r in rows]
    lines += ["", f"Paired ratios (2 / 1, per repetition): {', '.join(f'{v:.2f}' for v in ratios)}.",
              "The 2 replicas are logical devices of the same (shared, 2-core) CPU: this is the overhead of "
              "the mirrored machinery, not multi-GPU scaling."]
    write_text(os.path.join(RESULTS, "scaling.md"), "\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3))
    for i, n in enumerate(configs):
        ax.bar(i, med[n], color="tab:blue" if n == 1 else "tab:orange")
        ax.scatter([i] * len(runs[n]), [r["samples_per_s"] for r in runs[n]], color="k", s=10, zorder=3)
    ax.set_xticks(range(len(configs)), ["1 replica\n(default)", "2 replicas\n(Mirrored, 2 logical CPUs)"])
    ax.set_ylabel("samples / s")
    ax.set_title(f"QAT RepVGG-A0 32x32 fit, global batch {args.batch}", fontsize=9)
    fig.tight_layout()
    atomic_write(os.path.join(RESULTS, "scaling.png"), lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
