"""Export a QAT checkpoint: SavedModel and/or full-integer TFLite with a fidelity report.

    python export.py --checkpoint RUN_DIR_OR_FILE --format {savedmodel,tflite,both} --output DIR
                     [--overwrite] [--float_io] [--num_eval 256] [--num_calib 128] [--dataset mnist5k]
                     [--data_dir DIR] [--scale S]

Writes into DIR (atomically: a failed export leaves an existing DIR as it was): saved_model/
(endpoints ``serve``, ``serve_uint8``), model_int8.tflite, model_int8_fidelity.{json,md}; with
fp_model.keras in the run dir also fp_saved_model/ and fp_merged.tflite. DIR must be new or
empty, or an earlier export (replaced only with --overwrite); anything else (a file, another
folder, the checkpoint's run directory, a special file) is refused before anything is read or
written (repq.outputs, docs/robustness.md). Errors print one line
on stderr (``--verbose_errors`` shows the traceback): exit code 2 for a bad command line, 1 for
a checkpoint, data or export failure. Stage lines on stderr say what is running. --num_eval takes
the first test images, a class-stratified sample, and --num_calib a seeded random sample of the
train split; the fidelity report says how many classes they cover (classes_covered).
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROG = "export.py"


class UsageError(Exception):
    """A bad command line; reported as one line on stderr with exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) raised as :class:`UsageError`."""

    def error(self, message):
        raise UsageError(message)


def parse_args(argv=None):
    p = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="train.py run dir or a .keras QAT model")
    p.add_argument("--format", choices=("savedmodel", "tflite", "both"), default="both")
    p.add_argument("--output", required=True, help="output directory: new, empty, or an earlier export with "
                   "--overwrite (replaced atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at --output")
    p.add_argument("--float_io", action="store_true", help="float32 TFLite input/output")
    p.add_argument("--num_eval", type=int, default=256, help="test images for the fidelity report")
    p.add_argument("--num_calib", type=int, default=128, help="train images calibrating unlearned ranges")
    p.add_argument("--dataset", default=None, help="repq.data name (default: mnist5k, skimage_sr for SR)")
    p.add_argument("--data_dir", default=None, help="tensorflow_datasets data_dir (cifar10, imagenet2012, div2k; "
                   "as train.py's --data_dir)")
    p.add_argument("--scale", type=int, default=None, help="SR upscaling factor (default: the model's)")
    p.add_argument("--verbose_errors", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    for name in ("num_eval", "num_calib"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}={getattr(args, name)} must be >= 1.")
    return args


def check_output(path, checkpoint, overwrite):
    """Raise UsageError unless ``path`` may receive the export (``repq.outputs.check_export_dir``:
    new, empty, or an earlier export with ``overwrite``; never ``checkpoint`` or a folder holding
    it) and files can be created next to it (where the export is assembled)."""
    import tempfile

    from repq.outputs import OutputError, check_export_dir

    try:
        check_export_dir(path, overwrite, checkpoint, flag="--output")
    except OutputError as err:
        raise UsageError(str(err)) from err
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise UsageError(f"--output {path!r} is not writable ({err.strerror or err}: {err.filename or parent}); "
                         "pass a writable --output.") from err


def sr_scale(model):
    """Upscaling factor of a super-resolution model (output size / input size for an 8x8 input)."""
    return int(model.compute_output_shape((1, 8, 8, 1))[1]) // 8


def check_data(model, dataset, is_sr, scale):
    """Raise ExportError unless ``dataset`` (a repq.data name) fits ``model``'s task and input shape."""
    from repq.data import dataset_info
    from repq.export import ExportError

    info = dataset_info(dataset, scale=scale or 2)
    task = "super_resolution" if is_sr else "classification"
    got, want = tuple(model.inputs[0].shape[1:]), tuple(info.image_shape)
    mismatch = len(got) != len(want) or any(g is not None and w is not None and g != w for g, w in zip(got, want))
    if info.task != task or mismatch:
        raise ExportError(f"--dataset {dataset} ({info.task}, images {want}) does not fit the checkpoint "
                          f"({task}, inputs {got}); pass the dataset the model was trained on.")
    if is_sr and scale is not None and scale != sr_scale(model):
        raise ExportError(f"--scale={scale}, but the checkpoint upscales by {sr_scale(model)}; drop --scale "
                          "or pass the model's factor.")


def stage(message):
    """One progress line on stderr (the stages of an export, like train.py's)."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def describe(what, batches, is_sr):
    """'N train images (...)' for a stage line: how many images, and the classes they cover."""
    from repq.data.subsets import classes_covered

    count = sum(len(x) for x, _ in batches)
    if is_sr:
        return f"{count} {what}"
    return f"{count} {what}, {classes_covered([y for _, y in batches])} classes"


def export(args):
    """Load, check and export as ``args`` say -> the fidelity report (None without TFLite)."""
    from repq.data import calibration_batches, get_dataset
    from repq.export import export_all
    from repq.export.files import load_checkpoint

    check_output(args.output, args.checkpoint, args.overwrite)
    stage(f"loading {args.checkpoint}")
    model = load_checkpoint(args.checkpoint)
    fp_path = os.path.join(args.checkpoint, "fp_model.keras")
    fp_model = load_checkpoint(fp_path) if os.path.isfile(fp_path) else None
    is_sr = model.inputs[0].shape[-1] == 1 and model.outputs[0].shape[-1] == 1
    dataset = args.dataset or ("skimage_sr" if is_sr else "mnist5k")
    check_data(model, dataset, is_sr, args.scale)
    scale = (args.scale or sr_scale(model)) if is_sr else None
    extra = dict(scale=scale, data_dir=args.data_dir) if is_sr else dict(data_dir=args.data_dir)
    calib = calibration_batches(dataset, args.num_calib, 16, labels=True, **extra)
    test, _ = get_dataset(dataset, "test", 16, limit=args.num_eval, **extra)
    test = [(x.numpy(), y.numpy()) for x, y in test]
    formats = ("savedmodel", "tflite") if args.format == "both" else (args.format,)
    if "tflite" in formats:
        stage(f"data ({dataset}): calibration {describe('train images (seeded random sample)', calib, is_sr)}; "
              f"fidelity {describe('test images (class-stratified)' if not is_sr else 'test images', test, is_sr)}")
    return export_all(model, args.output, calib, test, formats, args.float_io, dataset, scale, fp_model, log=stage)


def one_line(err):
    """``err`` as one line: an OSError as 'reason: file', others by their first line."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename or ''} ({type(err).__name__}); an existing --output is intact."
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def main(argv=None):
    """Run the CLI -> exit code (0 ok, 2 bad command line, 1 failure); errors are one line on stderr."""
    try:
        args = parse_args(argv)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    from repq.cli_env import setup  # first import of TF: quiet (repq.cli_env)

    setup()
    from repq.export import ExportError

    try:
        report = export(args)
    except UsageError as err:
        if args.verbose_errors:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except (ExportError, ValueError, OSError) as err:
        if args.verbose_errors:
            raise
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - TF/Keras failures on odd models: still one line
        if args.verbose_errors:
            raise
        print(f"{PROG}: error: export failed ({type(err).__name__}: {one_line(err)}); rerun with --verbose_errors "
              "for the traceback.", file=sys.stderr)
        return 1
    if report:
        keys = ("num_images", "classes_covered", "top1_agreement", "psnr_keras", "psnr_tflite", "max_abs_diff_steps",
                "integer_only", "all_convs_integer", "weights_on_grid", "scales_match_learned", "size_bytes")
        print(", ".join(f"{k}={report[k]}" for k in keys if k in report))
        emulated = report["integer_emulation"]
        print(f"integer-exact Keras inference vs TFLite: max_abs_diff_steps={emulated['max_abs_diff_steps']}, "
              f"bit_exact_fraction={emulated['bit_exact_fraction']}")
    print(f"wrote {args.output}")
    return 0


def console_main():
    """Entry point of ``repq-export`` and ``python export.py``."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
