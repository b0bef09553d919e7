"""RepQ-BN's folded kernels in training mode (batch statistics) against inference mode (moving ones), per layer.

    python benchmarks/repq_bn_fold.py --model ac_resnet18 \
        --fp_checkpoint runs/qat_results/ac_resnet18_s0_fp/fp_model.keras [--bits 4/4 3/3 2/4] [--images 250] \
        [--bn_variance_floor]

RepQ-BN trains with every branch BatchNorm folded into the merged kernel on the *batch* statistics of
the current (quantized) inputs; the weight steps are calibrated (``repq.qat.calibrate``) on the kernel
folded with the *moving* statistics. For a trained FP model, this quantizes it as train.py's RepQ
rows do (``quantize_model(bn="repq")`` with the recipe's config, ``calibrate`` on one training batch)
and runs ``--images`` test images once in each mode. Per quantized layer: the output's standard
deviation and the folded kernel's max |W| in both modes (ratio training / inference), and the
top-1 of each mode. Where a layer's ratio is large the training-mode kernel leaves the calibrated
weight grid (clipped at ``qmax * step``). ``--bn_variance_floor`` quantizes with the BN variance floor
(``quantize_model(bn_variance_floor=True)``: training folds with max(batch, moving) variance).

Writes benchmarks/results/repq_bn_fold_<model>[_bn_variance_floor].{json,md} with the commit and the command.
"""

import argparse
import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
sys.path.insert(0, ROOT)

from benchmarks.checks import missing_fp_checkpoint  # noqa: E402
from benchmarks.provenance import markdown_header, provenance, repo_relative  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ac_resnet18")
    p.add_argument("--fp_checkpoint", required=True)
    p.add_argument("--bits", nargs="+", default=["4/4", "3/3", "2/4"], help="weight/activation bits, e.g. 2/4")
    p.add_argument("--images", type=int, default=250, help="test images for the forward passes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bn_variance_floor", action="store_true",
                   help="quantize with quantize_model(bn_variance_floor=True) (train.py --bn_variance_floor)")
    p.add_argument("--results_dir", default=RESULTS)
    args = p.parse_args(argv)
    missing = missing_fp_checkpoint(args.fp_checkpoint, args.model)
    if missing:
        p.error(missing)
    try:
        args.bits = [tuple(int(b) for b in pair.split("/")) for pair in args.bits]
    except ValueError:
        p.error(f"--bits {args.bits}: give weight/activation pairs such as 4/4 2/4.")
    return args


@contextlib.contextmanager
def recording(layers):
    """While active, every call of a layer in ``layers`` adds ``{training: (output std, folded max|W|)}``
    under its name to the yielded dict (the layers' ``call`` is wrapped, then restored)."""
    import numpy as np

    seen, originals = {}, {}

    def wrapped(layer, call):
        def record(inputs, training=False, **kwargs):
            y = call(inputs, training=training, **kwargs)
            kernel, _ = layer.float_kernel_and_bias(layer.quantize_input(inputs, training), training)
            seen.setdefault(layer.name, {})[bool(training)] = (float(np.std(np.asarray(y))),
                                                                float(np.abs(np.asarray(kernel)).max()))
            return y
        return record

    for layer in layers:
        originals[layer] = vars(layer).get("call")  # None: the class's call
        layer.call = wrapped(layer, layer.call)
    try:
        yield seen
    finally:
        for layer, call in originals.items():
            if call is None:
                del layer.call
            else:
                layer.call = call


def measure(fp_model, config, weight_bits, act_bits, calibration, images, labels, seed, bn_variance_floor=False):
    """One bit width -> ``{bits, top1_inference, top1_training, layers: [...]}``."""
    import keras
    import numpy as np

    from repq.qat import calibrate, quantize_model
    from repq.qat.transform import quantized_layers

    keras.utils.set_random_seed(seed)
    qat = quantize_model(fp_model, weight_bits, act_bits, bn="repq", config=config, bn_variance_floor=bn_variance_floor)
    calibrate(qat, calibration)
    folded = [w for w in quantized_layers(qat) if hasattr(w, "float_kernel_and_bias")]
    top1 = {}
    with recording(folded) as seen:
        for training in (False, True):
            logits = np.asarray(qat(images, training=training))
            top1[training] = 100.0 * float(np.mean(logits.argmax(-1) == labels))
    layers = []
    for name, modes in seen.items():
        (std_inf, k_inf), (std_train, k_train) = modes[False], modes[True]
        layers.append(dict(layer=name, std_inference=std_inf, std_training=std_train,
                           std_ratio=std_train / max(std_inf, 1e-12), kernel_max_inference=k_inf,
                           kernel_max_training=k_train, kernel_ratio=k_train / max(k_inf, 1e-12)))
    return dict(weight_bits=weight_bits, act_bits=act_bits, top1_inference=top1[False], top1_training=top1[True],
                layers=layers)


def markdown(info, args, runs):
    lines = [markdown_header(info),
             f"{args.model} from `{repo_relative(args.fp_checkpoint)}`, {args.images} test images, calibrated on one "
             "training batch of the recipe's size. Ratios: training mode (BN folded on batch statistics"
             + (", floored by the moving variance: --bn_variance_floor" if args.bn_variance_floor else "")
             + ") / inference mode (moving statistics).", ""]
    for run in runs:
        lines += [f"### W{run['weight_bits']}A{run['act_bits']}: top-1 {run['top1_inference']:.1f} % in inference "
                  f"mode, {run['top1_training']:.1f} % in training mode", "",
                  "| layer | output std (inference / training) | ratio | folded max abs W (inference / training) | ratio |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['std_inference']:.3g} / {r['std_training']:.3g} | {r['std_ratio']:.2f} "
                  f"| {r['kernel_max_inference']:.3g} / {r['kernel_max_training']:.3g} | {r['kernel_ratio']:.2f} |"
                  for r in run["layers"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    from repq.cli_env import setup

    setup()
    import numpy as np

    from repq import models
    from repq.cli import train
    from repq.data import get_dataset
    from repq.export.files import load_checkpoint
    from repq.training.artifacts import write_json, write_text

    info = provenance(argv and [sys.argv[0], *argv])
    fp_model = load_checkpoint(args.fp_checkpoint)
    models.set_registry_name(fp_model, args.model)  # quantized with the model's rules, as train.py does
    recipe = train.with_model_scale(train.recipe_module(args.model).get_config(), args.model)
    train_ds, _ = get_dataset(recipe.data.name, "train", recipe.batch_size, limit=recipe.batch_size)
    test_ds, _ = get_dataset(recipe.data.name, "test", args.images, limit=args.images)
    (calibration, _), (images, labels) = next(iter(train_ds)), next(iter(test_ds))
    runs = []
    for weight_bits, act_bits in args.bits:
        runs.append(measure(fp_model, train.quantize_config(recipe, fp_model), weight_bits, act_bits,
                            calibration, images, np.asarray(labels), args.seed, args.bn_variance_floor))
        print(f"W{weight_bits}A{act_bits}: top-1 {runs[-1]['top1_inference']:.1f} % inference, "
              f"{runs[-1]['top1_training']:.1f} % training; largest kernel ratio "
              f"{max(r['kernel_ratio'] for r in runs[-1]['layers']):.1f}", flush=True)
    base = os.path.join(args.results_dir, f"repq_bn_fold_{args.model}" + ("_bn_variance_floor" if args.bn_variance_floor else ""))
    write_json(base + ".json", dict(provenance=info, args=repo_relative(vars(args)), runs=runs))
    write_text(base + ".md", markdown(info, args, runs))
    print(markdown(info, args, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
