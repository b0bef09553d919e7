"""Export a QAT checkpoint: SavedModel and/or full-integer TFLite with a fidelity report.

    python export.py --checkpoint RUN_DIR_OR_FILE --format {savedmodel,tflite,both} --output DIR
                     [--float_io] [--num_eval 256] [--num_calib 128] [--dataset mnist5k] [--scale 2]

Writes into DIR (atomically): saved_model/ (endpoints ``serve``, ``serve_uint8``),
model_int8.tflite, model_int8_fidelity.{json,md}; with fp_model.keras in the run dir
also fp_saved_model/ and fp_merged.tflite. Errors: one line on stderr, exit code 1.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="train.py run dir or a .keras QAT model")
    p.add_argument("--format", choices=("savedmodel", "tflite", "both"), default="both")
    p.add_argument("--output", required=True, help="output directory (replaced atomically)")
    p.add_argument("--float_io", action="store_true", help="float32 TFLite input/output")
    p.add_argument("--num_eval", type=int, default=256, help="test images for the fidelity report")
    p.add_argument("--num_calib", type=int, default=128, help="train images calibrating unlearned ranges")
    p.add_argument("--dataset", default=None, help="repq.data name (default: mnist5k, skimage_sr for SR)")
    p.add_argument("--scale", type=int, default=2, help="SR upscaling factor")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from repq.data import calibration_batches, get_dataset
    from repq.export import ExportError, export_all
    from repq.export.files import load_checkpoint
    try:
        model = load_checkpoint(args.checkpoint)
        fp_path = os.path.join(args.checkpoint, "fp_model.keras")
        fp_model = load_checkpoint(fp_path) if os.path.isfile(fp_path) else None
        is_sr = model.inputs[0].shape[-1] == 1 and model.outputs[0].shape[-1] == 1
        dataset = args.dataset or ("skimage_sr" if is_sr else "mnist5k")
        extra = dict(scale=args.scale) if is_sr else {}
        calib = calibration_batches(dataset, args.num_calib, 16, **extra)
        test, _ = get_dataset(dataset, "test", 16, limit=args.num_eval, **extra)
        formats = ("savedmodel", "tflite") if args.format == "both" else (args.format,)
        report = export_all(model, args.output, calib, [(x.numpy(), y.numpy()) for x, y in test], formats,
                            args.float_io, dataset, args.scale if is_sr else None, fp_model)
    except (ExportError, ValueError, OSError) as err:
        print(f"export.py: error: {err}".splitlines()[0], file=sys.stderr)
        return 1
    if report:
        keys = ("top1_agreement", "psnr_keras", "psnr_tflite", "max_abs_diff_steps", "all_convs_integer",
                "weights_on_grid", "scales_match_learned", "size_bytes")
        print(", ".join(f"{k}={report[k]}" for k in keys if k in report))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
