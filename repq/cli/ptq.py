"""Post-training quantization of a classifier: FP vs quantized top-1, per-unit losses.

    python ptq.py --model resnet18 --weight_bits 4 --act_bits 4 --method qdrop
    python ptq.py ... --calib_size 1024 --iters 20000 --fp_checkpoint fp.keras   # the papers' protocol
    python ptq.py ... --method mrecg_loss --baseline_run QDROP_RUN_DIR   # reuse a QDrop run as MRECG's search

The defaults (256 calibration images, 100 iterations per unit) are a CPU budget that finishes in
minutes on the embedded data; the papers reconstruct with 1,024 images and 20,000 iterations
(docs/ptq.md). Without --fp_checkpoint a small FP model is trained first (repq.ptq.fp_baseline,
3 epochs Adam) and saved as fp_model.keras. Stage lines go to stderr, the progress bars and
per-unit lines to stdout. Writes results.json, unit_losses.json, unit_losses.png and the PTQ model
(ptq_model.keras, a QAT-format model: `export.py --checkpoint OUTPUT_DIR` exports it) to --output_dir
(atomically). Resumable: the calibrated model and every reconstructed unit are
checkpointed in --output_dir/checkpoints (repq.ptq.checkpoint); rerunning the same command
after a crash or SIGTERM/SIGINT resumes after the last finished unit and ends with the same
results; run_config.json refuses a rerun with other settings once the run has results there.
--output_dir must be new, empty or a ptq.py run directory (repq.outputs). Errors print one line on
stderr: exit code 2 for bad input, 1 for failures, 128+N for signal N. See docs/robustness.md.
"""

import os
import signal
import sys

from absl import flags

# ptq.py's own flag registry: it can be imported next to train.py (same flag names) and driven
# in-process by the tests, like train.cli.
FLAGS = flags.FlagValues()
flags.DEFINE_string("model", "resnet18", "model name (models.create_model); a --fp_checkpoint is quantized "
                    "with its registry defaults", flag_values=FLAGS)
flags.DEFINE_string("method", "qdrop", "PTQ method (repq.ptq.METHODS): rtn, adaround, brecq, qdrop, "
                    "mrecg_modcap or mrecg_loss", flag_values=FLAGS)
flags.DEFINE_integer("weight_bits", 4, "weight bits (2..8)", flag_values=FLAGS)
flags.DEFINE_integer("act_bits", 4, "activation bits (2..8)", flag_values=FLAGS)
flags.DEFINE_integer("calib_size", 256, "calibration images from the train split (a seeded random sample; "
                     "the papers use 1024)", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 32, "samples per reconstruction step", flag_values=FLAGS)
flags.DEFINE_integer("iters", 100, "reconstruction steps per unit (a CPU budget; the papers' protocol is 20000)",
                     flag_values=FLAGS)
flags.DEFINE_string("fp_checkpoint", None, "trained FP model (.keras); trained briefly if omitted",
                    flag_values=FLAGS)
flags.DEFINE_string("dataset", "mnist5k", "dataset name (repq.data)", flag_values=FLAGS)
flags.DEFINE_string("output_dir", "ptq_out", "where results go", flag_values=FLAGS)
flags.DEFINE_string("scheme", None, "MRECG scheme, e.g. '0,(1,2),3,...' (one entry per merged unit)",
                    flag_values=FLAGS)
flags.DEFINE_integer("topk", None, "MRECG merges (default: --model's registry entry, 2 for ResNet-18, 7 for "
                     "MobileNetV2, else units // 5)",
                     flag_values=FLAGS)
flags.DEFINE_string("baseline_run", None, "mrecg_loss only: a finished ptq.py --method=qdrop run directory with "
                    "the same settings; its per-unit losses are MRECG's search pass (the same QDrop pass), which "
                    "is then not repeated", flag_values=FLAGS)
flags.DEFINE_float("width_multiplier", None, "MobileNetV2 width when training a new FP model", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "random seed", flag_values=FLAGS)
flags.DEFINE_bool("verbose_errors", False, "Show tracebacks for errors.", flag_values=FLAGS)
flags.DEFINE_integer("crash_after_units", None, "Test hook: fail after this many reconstructed units.",
                     flag_values=FLAGS)

# the settings recorded in run_config.json: a rerun into the same --output_dir must match them
RUN_KEYS = ("model", "method", "weight_bits", "act_bits", "calib_size", "batch_size", "iters", "fp_checkpoint",
            "dataset", "scheme", "topk", "width_multiplier", "seed")
CHECKPOINTS = "checkpoints"


class UsageError(Exception):
    """A bad command line; reported as one line on stderr with exit code 2."""


def check_flags():
    """Validate the command line before any model is loaded or trained -> the dataset's DatasetInfo."""
    from repq import models
    from repq.data import dataset_info
    from repq.ptq import METHODS
    from repq.quantizers import MAX_BITS, MIN_BITS, integer_range

    if FLAGS.model not in models.list_models():
        raise UsageError(f"unknown model {FLAGS.model!r}; choose one of: {', '.join(models.list_models())}.")
    if FLAGS.method not in METHODS:
        raise UsageError(f"unknown method {FLAGS.method!r}; choose one of: {', '.join(METHODS)}.")
    for name in ("weight_bits", "act_bits"):
        try:
            integer_range(getattr(FLAGS, name), signed=False)
        except ValueError as err:
            raise UsageError(f"--{name}={getattr(FLAGS, name)}: bit width must be an integer in "
                             f"[{MIN_BITS}, {MAX_BITS}].") from err
    for name in ("calib_size", "batch_size", "iters"):
        if getattr(FLAGS, name) < 1:
            raise UsageError(f"--{name}={getattr(FLAGS, name)} must be >= 1.")
    if FLAGS.topk is not None and FLAGS.topk < 0:
        raise UsageError(f"--topk={FLAGS.topk} must be >= 0.")
    if (FLAGS.scheme or FLAGS.topk is not None) and not FLAGS.method.startswith("mrecg"):
        raise UsageError(f"--scheme / --topk apply to the mrecg_* methods, not --method={FLAGS.method}.")
    if FLAGS.baseline_run and FLAGS.method != "mrecg_loss":
        raise UsageError(f"--baseline_run applies to --method=mrecg_loss, not --method={FLAGS.method}.")
    if FLAGS.fp_checkpoint and not os.path.isfile(FLAGS.fp_checkpoint):
        raise UsageError(f"--fp_checkpoint {FLAGS.fp_checkpoint!r} does not exist.")
    try:
        info = dataset_info(FLAGS.dataset)
    except (ValueError, OSError) as err:
        raise UsageError(str(err)) from err
    if info.task != "classification":
        raise UsageError(f"--dataset {FLAGS.dataset} is for {info.task}; ptq.py quantizes classifiers.")
    return info


def _same_setting(key, theirs, ours):
    """Whether a recorded setting equals this run's; an --fp_checkpoint is the same file under any path."""
    if key == "fp_checkpoint" and theirs and ours and os.path.exists(theirs) and os.path.exists(ours):
        return os.path.samefile(theirs, ours)
    return theirs == ours


def baseline_losses(run_dir):
    """Per-unit losses of the QDrop run in ``run_dir`` (``--baseline_run``), checked to be a finished
    ptq.py QDrop run with this command's settings (a UsageError names the first difference)."""
    import json

    paths = {name: os.path.join(run_dir, f"{name}.json") for name in ("run_config", "results", "unit_losses")}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise UsageError(f"--baseline_run {run_dir!r} is not a finished ptq.py run ({missing[0]} is missing); "
                         "run ptq.py --method=qdrop with the same settings into it first.")
    with open(paths["run_config"]) as f:
        config = json.load(f)
    if config.get("method") != "qdrop":
        raise UsageError(f"--baseline_run {run_dir!r} is a --method={config.get('method')} run; it must be qdrop.")
    for key in RUN_KEYS:
        if key not in ("method", "scheme", "topk") and not _same_setting(key, config.get(key), getattr(FLAGS, key)):
            raise UsageError(f"--baseline_run {run_dir!r} ran with --{key}={config.get(key)}, this run has "
                             f"--{key}={getattr(FLAGS, key)}; the QDrop run must match every setting.")
    with open(paths["unit_losses"]) as f:
        return json.load(f)["unit_losses"]


def prepare_output_dir(output_dir):
    """Check that ``output_dir`` may hold this run (``repq.outputs.check_run_dir``: new, empty or a
    ptq.py run directory), create it with its marker and record the settings in
    ``run_config.json`` (refusing other settings of an earlier run that left results there); an
    output directory that cannot be written is a UsageError."""
    from repq.outputs import OutputError, prepare_run_dir
    from repq.training import check_run_config

    try:
        prepare_run_dir(output_dir, "ptq")
        note = check_run_config(output_dir, {key: getattr(FLAGS, key) for key in RUN_KEYS})
    except OutputError as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError(f"output directory {output_dir!r} is not writable ({err.strerror or err}); "
                         "pass a writable --output_dir.") from err
    if note:
        print(f"ptq.py: {note}", file=sys.stderr)


def check_model(model, info):
    """Raise UsageError unless ``model`` (the --fp_checkpoint) is a classifier for ``info`` (DatasetInfo)."""
    from repq import models

    from repq.checks import quantized_layer_names

    if quantized_layer_names(model):
        raise UsageError(f"--fp_checkpoint {FLAGS.fp_checkpoint} is a QAT model (quantized layers, e.g. "
                         f"{quantized_layer_names(model)[0]}); PTQ starts from the floating-point model: pass "
                         "train.py's fp_model.keras.")
    got, want = tuple(model.inputs[0].shape[1:]), tuple(info.image_shape)
    if len(got) != len(want) or any(g is not None and g != w for g, w in zip(got, want)):
        raise UsageError(f"--fp_checkpoint {FLAGS.fp_checkpoint} takes inputs {got}, --dataset {FLAGS.dataset} "
                         f"has images {want}; pass the matching --dataset.")
    if tuple(model.outputs[0].shape[1:]) != (info.num_classes,):
        raise UsageError(f"--fp_checkpoint {FLAGS.fp_checkpoint} outputs {tuple(model.outputs[0].shape[1:])}, "
                         f"--dataset {FLAGS.dataset} needs {info.num_classes} class logits.")
    if model.name in models.list_models() and model.name != FLAGS.model:
        raise UsageError(f"--fp_checkpoint {FLAGS.fp_checkpoint} is a {model.name} model, not --model "
                         f"{FLAGS.model}; pass the matching --model.")


UNIT_LOSS_ONLY_KEYS = ("unit_losses", "unit_losses_init", "unit_loss_curves")  # kept out of results.json
UNIT_LOSS_KEYS = ("units", "baseline_unit_losses") + UNIT_LOSS_ONLY_KEYS  # unit_losses.json


def plot_losses(report, path):
    """Per-unit L_rec after reconstruction (left) and each unit's training L_rec against its
    optimisation step, relative to the unit's first recorded value (right: flat at the end = the
    loss has stopped falling); written atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from repq.training import atomic_write

    fig, (ax, curves) = plt.subplots(1, 2, figsize=(11, 3.5))
    if report.get("baseline_unit_losses"):
        ax.plot(report["baseline_unit_losses"], "o-", label="QDrop (base units)")
    ax.plot(report["unit_losses"], "s-", label=report["method"])
    ax.set_xlabel("reconstruction unit")
    ax.set_ylabel("L_rec after reconstruction")
    ax.legend()
    for i, curve in enumerate(report.get("unit_loss_curves") or []):
        if curve and curve["rec"] and curve["rec"][0] > 0:
            curves.plot(curve["step"], [v / curve["rec"][0] for v in curve["rec"]], lw=1,
                        color=plt.cm.viridis(i / max(1, len(report["unit_loss_curves"]) - 1)))
    curves.set_xlabel("optimisation step (colour: unit, dark = first)")
    curves.set_ylabel("training L_rec / its first value")
    curves.set_yscale("log")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), ".png")
    finally:
        plt.close(fig)


def stage(message):
    """One progress line on stderr (the stages of a run, like train.py's)."""
    print(f"ptq.py: {message}", file=sys.stderr, flush=True)


def fp_model(output_dir):
    """The --fp_checkpoint, or an FP model trained once and kept as ``output_dir/fp_model.keras``."""
    from repq.ptq import fp_baseline
    from repq.training import InterruptHandler, TrainingInterrupted, load_model, save_model

    if FLAGS.fp_checkpoint:
        stage(f"loading the FP model {FLAGS.fp_checkpoint}")
        return load_model(FLAGS.fp_checkpoint, hint="pass a complete .keras file")
    path = os.path.join(output_dir, "fp_model.keras")
    if os.path.exists(path):
        stage(f"loading the FP model trained by an earlier run, {path}")
        return load_model(path, hint="delete it to retrain the FP model")
    stage(f"FP baseline (no --fp_checkpoint): training {FLAGS.model} on {FLAGS.dataset} for "
          f"{fp_baseline.DEFAULT_EPOCHS} epochs, kept as {path}")
    kwargs = {"width_multiplier": FLAGS.width_multiplier} if FLAGS.width_multiplier else {}
    try:
        model = fp_baseline.train_fp_model(FLAGS.model, FLAGS.dataset, seed=FLAGS.seed, verbose=1,
                                           callbacks=[InterruptHandler()], **kwargs)
    except (TrainingInterrupted, KeyboardInterrupt) as err:
        if isinstance(err, KeyboardInterrupt):
            err = TrainingInterrupted(signal.SIGINT)
        err.lost = (f"the FP-baseline training was stopped and not kept ({path} not written, nothing else "
                    "changed): rerun the same command to train it again, or pass --fp_checkpoint")
        raise err from None
    save_model(model, path)
    return model


def write_outputs(output_dir, results, report, models_by_name):
    """``{name: model}`` as ``name.keras``, results.json, unit_losses.json and unit_losses.png, each
    written atomically (the models first: results.json marks a finished run)."""
    from repq.training import save_model, write_json

    for name, model in models_by_name.items():
        save_model(model, os.path.join(output_dir, f"{name}.keras"))
    write_json(os.path.join(output_dir, "results.json"), results)
    write_json(os.path.join(output_dir, "unit_losses.json"),
               {k: report.get(k) for k in UNIT_LOSS_KEYS})
    plot_losses(report, os.path.join(output_dir, "unit_losses.png"))


def run(info):
    """The PTQ run of the command line (``info``: DatasetInfo of --dataset)."""
    import repq
    from repq import models
    from repq.data import calibration_batches, get_dataset
    from repq.ptq import quantize_ptq
    from repq.ptq.fp_baseline import top1_accuracy
    from repq.ptq.units import parse_scheme
    from repq.data.subsets import classes_covered

    scheme = parse_scheme(FLAGS.scheme) if FLAGS.scheme else None
    output_dir = FLAGS.output_dir
    prepare_output_dir(output_dir)
    stage(f"output directory {output_dir}")
    baseline = baseline_losses(FLAGS.baseline_run) if FLAGS.baseline_run else None
    model = models.set_registry_name(fp_model(output_dir), FLAGS.model)  # quantized with --model's defaults
    check_model(model, info)
    test, _ = get_dataset(FLAGS.dataset, "test", 250)  # the whole test split
    calib = calibration_batches(FLAGS.dataset, FLAGS.calib_size, FLAGS.batch_size, seed=FLAGS.seed, labels=True)
    calib_classes = classes_covered([y for _, y in calib])
    stage(f"PTQ {FLAGS.method} W{FLAGS.weight_bits}A{FLAGS.act_bits}: {sum(len(x) for x, _ in calib)} calibration "
          f"images ({FLAGS.dataset} train, seeded random sample, {calib_classes} of {info.num_classes} classes)"
          + ("" if FLAGS.method == "rtn" else f", {FLAGS.iters} iterations per unit"))
    qmodel, report = quantize_ptq(model, [x for x, _ in calib], FLAGS.method, FLAGS.weight_bits, FLAGS.act_bits,
                                  iters=FLAGS.iters, batch_size=FLAGS.batch_size, scheme=scheme,
                                  topk=FLAGS.topk, seed=FLAGS.seed, baseline_losses=baseline,
                                  checkpoint_dir=os.path.join(output_dir, CHECKPOINTS),
                                  crash_after_units=FLAGS.crash_after_units)
    stage(f"evaluating the FP, PTQ and deploy (repq.reparametrize) models on the {info.num_test} {FLAGS.dataset} "
          "test images")
    labels = []
    fp_top1, q_top1 = top1_accuracy(model, test, labels), top1_accuracy(qmodel, test)
    deploy_top1 = top1_accuracy(repq.reparametrize(qmodel), test)
    results = {"model": FLAGS.model, "dataset": FLAGS.dataset, "fp_top1": fp_top1, "ptq_top1": q_top1,
               "deploy_top1": deploy_top1, "deploy_matches_ptq": deploy_top1 == q_top1,
               "eval_images": len(labels), "classes_covered": classes_covered(labels),
               "num_classes": info.num_classes, "calib_classes_covered": calib_classes,
               "baseline_run": FLAGS.baseline_run,
               **{k: v for k, v in report.items() if k not in UNIT_LOSS_ONLY_KEYS}}
    results["scheme"] = str(report["scheme"]) if report["scheme"] else None
    write_outputs(output_dir, results, report, {"ptq_model": qmodel})
    print(f"| model | W/A | method | FP top-1 | PTQ top-1 | deploy top-1 | time (s) |\n"
          f"|---|---|---|---|---|---|---|\n"
          f"| {FLAGS.model} | {FLAGS.weight_bits}/{FLAGS.act_bits} | {FLAGS.method} | {fp_top1:.2f} | "
          f"{q_top1:.2f} | {deploy_top1:.2f} | {report['ptq_time_s']:.0f} |")


def error_exit(message, code):
    print(f"ptq.py: error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv):
    """Parse ``argv`` into FLAGS (``--help`` prints the flags and exits 0); a bad flag exits 2."""
    if {"--help", "-h", "--helpfull"} & set(argv[1:]):
        print(__doc__ + "\n" + FLAGS.get_help())
        sys.exit(0)
    FLAGS.unparse_flags()
    try:
        rest = FLAGS(argv)
    except flags.Error as err:
        from repq.cli_env import flag_error_line

        error_exit(flag_error_line(err, "ptq.py"), 2)
    if len(rest) > 1:
        error_exit(f"unexpected arguments: {' '.join(rest[1:])}", 2)


def cli(argv):
    """Run ptq.py with ``argv``; every error becomes one line on stderr and an exit code."""
    parse_flags(argv)
    from repq.cli_env import setup  # first import of TF: quiet (repq.cli_env)

    setup()
    from repq.training import CheckpointError, SimulatedCrash, TrainingInterrupted, os_error_line

    try:
        run(check_flags())
    except (UsageError, CheckpointError, ValueError, TypeError) as err:
        if FLAGS.verbose_errors:
            raise
        error_exit(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__, 2)
    except TrainingInterrupted as err:
        error_exit(f"interrupted ({err}); " + getattr(err, "lost", "finished units are checkpointed: rerun the "
                                                      "same command to resume") + ".", 128 + err.signum)
    except KeyboardInterrupt:
        error_exit("interrupted (Ctrl-C); finished units are checkpointed, the unit in progress is not: rerun "
                   "the same command to resume.", 130)
    except SimulatedCrash as err:
        error_exit(f"{err}. Rerun the same command to resume from the last checkpoint.", 1)
    except OSError as err:  # full disk, permissions, ... (earlier outputs are intact: writes are atomic)
        if FLAGS.verbose_errors:
            raise
        error_exit(os_error_line(err), 1)

def console_main():
    """Entry point of ``repq-ptq`` and ``python ptq.py``."""
    cli(sys.argv)


if __name__ == "__main__":
    console_main()
