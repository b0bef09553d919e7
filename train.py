"""RepQ training CLI: FP training -> QAT (RepQ or a baseline) -> evaluation and artefacts.

  python train.py --model repvgg_a0 --bits 4 --bnest
  python train.py --model ecbsr_m4c16 --bits 4 --method merged_lsq
  python train.py --model repvgg_a0 --config=configs/repvgg_a0.py:imagenet --dataset imagenet2012 --data_dir ~/tfds

Writes into --output_dir (default runs/<model>_<method>_w<W>a<A>[_bnest]): fp_model.keras,
qat_model.keras, deploy_model.keras (repq.reparametrize of the QAT model), results.json,
results.md and tensorboard/. Usage errors print one line on stderr and exit with code 2.
"""

import importlib
import os
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

METHODS = ("repq", "merged_lsq", "tfmot8", "fp")

flags.DEFINE_string("model", "repvgg_a0", "Zoo model (models.list_models()).")
flags.DEFINE_string("method", "repq", f"One of {', '.join(METHODS)}.")
flags.DEFINE_integer("bits", 4, "Weight and activation bit width (2..8).")
flags.DEFINE_integer("weight_bits", None, "Overrides --bits for weights.")
flags.DEFINE_integer("act_bits", None, "Overrides --bits for activations.")
flags.DEFINE_bool("bnest", False, "BN estimation in the FP and QAT stages (RepQ-BNEst).")
flags.DEFINE_string("dataset", None, "Dataset (default: the recipe's; mnist5k / skimage_sr embedded).")
flags.DEFINE_string("data_dir", None, "tensorflow_datasets data_dir for cifar10 / imagenet2012.")
flags.DEFINE_integer("epochs", None, "QAT epochs (overrides the recipe).")
flags.DEFINE_integer("fp_epochs", None, "FP epochs (overrides the recipe).")
flags.DEFINE_integer("batch_size", None, "Batch size (overrides the recipe).")
flags.DEFINE_string("fp_checkpoint", None, "A trained FP model (.keras) to start from instead of FP training.")
flags.DEFINE_string("output_dir", None, "Run directory (default runs/<model>_<method>_w<W>a<A>[_bnest]).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("limit", None, "Use only this many train and test examples, one pass per epoch (smoke tests).")
flags.DEFINE_bool("verbose_errors", False, "Show tracebacks for usage errors.")
config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/repvgg_a0.py:imagenet "
                                "(default: configs/<model family>.py, embedded variant).")
FLAGS = flags.FLAGS


class UsageError(Exception):
    """A bad command line; reported as one line on stderr with exit code 2."""


def recipe_module(model):
    """``configs`` module of a zoo model (``ecbsr_m4c16_x4`` -> ``configs.ecbsr_m4c16``)."""
    family = model.split("_x")[0] if model.startswith("ecbsr") else model
    try:
        return importlib.import_module(f"configs.{family}")
    except ModuleNotFoundError as err:
        raise UsageError(f"no recipe for model {model!r} (configs/{family}.py); pass --config.") from err


def check_flags():
    """Validate the command line; returns (weight_bits, act_bits)."""
    import models
    from repq.quantizers import integer_range

    if FLAGS.model not in models.list_models():
        raise UsageError(f"unknown model {FLAGS.model!r}; choose one of: {', '.join(models.list_models())}.")
    if FLAGS.method not in METHODS:
        raise UsageError(f"unknown method {FLAGS.method!r}; choose one of: {', '.join(METHODS)}.")
    w_bits = FLAGS.bits if FLAGS.weight_bits is None else FLAGS.weight_bits
    a_bits = FLAGS.bits if FLAGS.act_bits is None else FLAGS.act_bits
    for name, bits in (("weight_bits", w_bits), ("act_bits", a_bits)):
        try:
            integer_range(bits, True)
        except ValueError as err:
            raise UsageError(f"--{name}={bits}: {err}") from err
    if FLAGS.method == "tfmot8" and (w_bits, a_bits) != (8, 8):
        raise UsageError("--method=tfmot8 is tfmot's 8-bit scheme; use --bits 8.")
    if FLAGS.fp_checkpoint and not os.path.isfile(FLAGS.fp_checkpoint):
        raise UsageError(f"--fp_checkpoint {FLAGS.fp_checkpoint!r} does not exist.")
    if FLAGS.bnest and FLAGS.model.startswith("ecbsr"):
        raise UsageError("ECBSR has no BatchNorm; --bnest does not apply.")
    return w_bits, a_bits


def load_recipe():
    recipe = FLAGS.config if FLAGS.config is not None else recipe_module(FLAGS.model).get_config()
    recipe = recipe.copy_and_resolve_references()
    if FLAGS.dataset:
        recipe.data.name = FLAGS.dataset
    if FLAGS.epochs is not None:
        recipe.qat_epochs = FLAGS.epochs
    if FLAGS.fp_epochs is not None:
        recipe.fp_epochs = FLAGS.fp_epochs
    if FLAGS.batch_size is not None:
        recipe.batch_size = FLAGS.batch_size
    if FLAGS.limit is not None:
        recipe.data.limit_train = recipe.data.limit_test = FLAGS.limit
        recipe.steps_per_epoch = None
    if FLAGS.model.startswith("ecbsr"):
        recipe.data.scale = 4 if FLAGS.model.endswith("_x4") else 2
    return recipe


def load_data(recipe):
    from repq.data import get_dataset

    kwargs = dict(data_dir=FLAGS.data_dir, seed=FLAGS.seed)
    if recipe.task == "super_resolution":
        kwargs.update(scale=recipe.data.scale, patch_size=recipe.data.patch_size,
                      repeat_patches=recipe.data.repeat_patches)
    try:
        train, info = get_dataset(recipe.data.name, "train", recipe.batch_size, limit=recipe.data.limit_train, **kwargs)
        test, _ = get_dataset(recipe.data.name, "test", recipe.batch_size, limit=recipe.data.limit_test, **kwargs)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from err
    if info.task != recipe.task:
        raise UsageError(f"dataset {info.name!r} is for {info.task}, model {FLAGS.model!r} for {recipe.task}.")
    return train, test, info


def build_fp_model(recipe, info):
    import keras

    import models

    if FLAGS.fp_checkpoint:
        return keras.saving.load_model(FLAGS.fp_checkpoint, compile=False)
    if recipe.task == "super_resolution":
        kwargs = {} if FLAGS.model.endswith(("_x2", "_x4")) else dict(scale=recipe.data.scale)
        return models.create_model(FLAGS.model, **kwargs)
    return models.create_model(FLAGS.model, num_classes=info.num_classes, input_shape=info.image_shape,
                               norm_mode="bnest" if FLAGS.bnest else "bn")


def run_tfmot8(fp_model, recipe, output_dir):
    """tfmot 8-bit QAT of the merged model in a subprocess (tfmot flips TF to tf_keras)."""
    import json

    import repq
    from repq.baselines.merged_lsq import flatten_model
    from repq.training import save_model

    merged_path = os.path.join(output_dir, "merged_fp_model.keras")
    save_model(flatten_model(repq.reparametrize(fp_model)), merged_path)
    result_path = os.path.join(output_dir, "tfmot8.json")
    cmd = [sys.executable, "-m", "repq.baselines.tfmot8", f"--deploy_model={merged_path}",
           f"--output={result_path}", f"--dataset={recipe.data.name}", f"--task={recipe.task}",
           f"--scale={recipe.data.scale}", f"--epochs={recipe.qat_epochs}", f"--lr={recipe.lr.merged8}",
           f"--optimizer={recipe.optimizer}", f"--momentum={recipe.momentum}", f"--batch_size={recipe.batch_size}",
           f"--seed={FLAGS.seed}"]
    for flag, value in (("limit", recipe.data.limit_train), ("steps_per_epoch", recipe.steps_per_epoch),
                        ("data_dir", FLAGS.data_dir), ("patch_size", recipe.data.patch_size)):
        if value:
            cmd.append(f"--{flag}={value}")
    subprocess.run(cmd, check=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    with open(result_path) as f:
        return json.load(f)


def results_markdown(results):
    unit = "top-1 (%)" if results["task"] == "classification" else "PSNR-Y (dB)"
    lines = [f"# {results['model']} {results['method']} W{results['weight_bits']}A{results['act_bits']}"
             f"{' BNEst' if results['bnest'] else ''} on {results['dataset']}", "",
             f"| model | {unit} |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in results["metrics"].items()]
    if "deploy_matches_qat" in results:
        lines += ["", f"Deploy model equals QAT model: {results['deploy_matches_qat']} "
                      f"(max |diff| on one test batch: {results['deploy_max_abs_diff']:.3g})."]
    return "\n".join(lines) + "\n"


def run(w_bits, a_bits):
    import keras
    import numpy as np

    import repq
    from repq.baselines import merged_lsq_model
    from repq.qat import quantize_model
    from repq.training import evaluate, fit_model, save_model, write_json, write_text

    keras.utils.set_random_seed(FLAGS.seed)
    recipe = load_recipe()
    train_ds, test_ds, info = load_data(recipe)
    output_dir = FLAGS.output_dir or os.path.join(
        "runs", f"{FLAGS.model}_{FLAGS.method}_w{w_bits}a{a_bits}{'_bnest' if FLAGS.bnest else ''}")
    os.makedirs(output_dir, exist_ok=True)
    metric = "top1" if recipe.task == "classification" else "psnr"

    def score(model):
        return evaluate(model, test_ds, recipe.task, recipe.data.scale)[metric]

    times = {}
    start = time.time()
    fp_model = build_fp_model(recipe, info)
    if not FLAGS.fp_checkpoint:
        fit_model(fp_model, train_ds, test_ds, recipe, "fp", output_dir=output_dir)
        save_model(fp_model, os.path.join(output_dir, "fp_model.keras"))
    times["fp_s"] = time.time() - start
    results = dict(model=FLAGS.model, method=FLAGS.method, weight_bits=w_bits, act_bits=a_bits, bnest=FLAGS.bnest,
                   dataset=recipe.data.name, task=recipe.task, metric=metric, recipe=recipe.to_dict(),
                   metrics={"fp": score(fp_model)})
    start = time.time()
    if FLAGS.method == "tfmot8":
        results["metrics"]["tfmot8"] = run_tfmot8(fp_model, recipe, output_dir)[metric]
    elif FLAGS.method != "fp":
        if FLAGS.method == "repq":
            qat = quantize_model(fp_model, w_bits, a_bits, bn="bnest" if FLAGS.bnest else "repq")
        else:
            qat = merged_lsq_model(fp_model, w_bits, a_bits)
        fit_model(qat, train_ds, test_ds, recipe, "qat", weight_bits=w_bits, output_dir=output_dir)
        deploy = repq.reparametrize(qat)
        save_model(qat, os.path.join(output_dir, "qat_model.keras"))
        save_model(deploy, os.path.join(output_dir, "deploy_model.keras"))
        results["metrics"].update(qat=score(qat), deploy=score(deploy))
        x = next(iter(test_ds))[0]
        diff = float(np.max(np.abs(np.asarray(qat(x, training=False)) - np.asarray(deploy(x, training=False)))))
        results.update(deploy_max_abs_diff=diff,
                       deploy_matches_qat=results["metrics"]["qat"] == results["metrics"]["deploy"])
    times["qat_s"] = time.time() - start
    results["times"] = times
    write_json(os.path.join(output_dir, "results.json"), results)
    table = results_markdown(results)
    write_text(os.path.join(output_dir, "results.md"), table)
    print(table)
    return results


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    return run(*check_flags())


def cli(argv):
    try:
        main(argv)
    except UsageError as err:
        if FLAGS.verbose_errors:
            raise
        print(f"train.py: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(cli)
