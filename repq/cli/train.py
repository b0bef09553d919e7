"""RepQ training CLI: FP training -> QAT (RepQ or a baseline) -> evaluation and artefacts.

  python train.py --model repvgg_a0 --bits 4 --bnest
  python train.py --model ecbsr_m4c16 --bits 4 --method merged_lsq
  python train.py --model repvgg_a0 --bits 4 --method merged_lsq --ptq_init qdrop   # PTQ, then QAT from it
  python train.py --model repvgg_a0 --config=configs/repvgg_a0.py:imagenet --dataset imagenet2012 --data_dir ~/tfds

A recipe may carry an optional ``quantize`` field, per-layer bits of the RepQ QAT model (mixed
precision): ``config.quantize = ml_collections.ConfigDict(dict(layers={"stage4_*": 6, "stem": [8, 8]},
exclude=[]))`` (repq.QuantizeConfig: layer name or glob -> bits or [weight_bits, act_bits]).

Writes into --output_dir (default runs/<model>_<method>_w<W>a<A>[_bnest]): fp_model.keras,
qat_model.keras, deploy_model.keras (repq.reparametrize of the QAT model), results.json (the metric of
the FP, QAT and deploy models and of the integer TFLite model, computed by repq.integer_predict),
results.md and tensorboard/. Rerunning the same command resumes an interrupted run: finished
stages are loaded (fp_model.keras, qat_model.keras), an interrupted stage restarts from its
last epoch checkpoint (backup/<stage>/). Multi-device: --strategy mirrored|multi_worker|tpu
(--batch_size is the global batch). Errors (usage, corrupt checkpoint, NaN, full disk, ...)
print one line on stderr: exit code 2 for bad input, 1 for failures, 128+N for signal N.
See docs/robustness.md.
"""

import repq.cli_env; repq.cli_env.setup()  # noqa: E702,I001 - first: quiet TF import, harmless Keras warnings off
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
flags.DEFINE_bool("bnest_padding_aware", False, "With --bnest: estimate each branch's statistics with the zero padding "
                  "counted, not neglected as in the spec's formula (small feature maps; docs/training.md, 'BNEst's "
                  "estimation error on real feature maps').")
flags.DEFINE_string("dataset", None, "Dataset (default: the recipe's; mnist5k / skimage_sr embedded).")
flags.DEFINE_string("data_dir", None, "tensorflow_datasets data_dir for cifar10 / imagenet2012.")
flags.DEFINE_integer("epochs", None, "QAT epochs (overrides the recipe).")
flags.DEFINE_integer("fp_epochs", None, "FP epochs (overrides the recipe, and its bnest_fp_epochs with --bnest).")
flags.DEFINE_integer("batch_size", None, "Batch size (overrides the recipe).")
flags.DEFINE_string("freeze_bn_after", None, "RepQ QAT: epochs after which the BN statistics are frozen (overrides the "
                    "recipe's freeze_bn_after / bnest_freeze_bn_after); 'never': batch statistics throughout (Table S1).")
flags.DEFINE_bool("bn_variance_floor", None, "RepQ-BN QAT: fold each branch BN with max(batch, moving) variance in "
                  "training (overrides the recipe's bn_variance_floor; default off, RepQ-BN as specified); see "
                  "docs/training.md, 'RepQ-BN below 4 bits'.")
flags.DEFINE_string("ptq_init", None, "With --method=merged_lsq: start QAT from a PTQ result of this method "
                    "(repq.ptq.METHODS, e.g. qdrop) instead of the FP weights.")
flags.DEFINE_integer("ptq_iters", 100, "Reconstruction steps per unit for --ptq_init.")
flags.DEFINE_integer("ptq_calib_size", 256, "Calibration images (from the train split) for --ptq_init.")
flags.DEFINE_string("fp_checkpoint", None, "A trained FP model (.keras) to start from instead of FP training.")
flags.DEFINE_string("output_dir", None, "Run directory (default runs/<model>_<method>_w<W>a<A>[_bnest]).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("limit", None, "Use only this many train and test examples, one pass per epoch (smoke tests).")
flags.DEFINE_bool("verbose_errors", False, "Show tracebacks for usage errors.")
flags.DEFINE_string("strategy", "default", "tf.distribute strategy: default, mirrored, multi_worker or tpu.")
flags.DEFINE_integer("num_cpu_devices", None, "Split the CPU into N logical devices (testing --strategy=mirrored on a CPU).")
flags.DEFINE_string("tpu", None, "TPU name/address for --strategy=tpu (default: the TPUClusterResolver's).")
flags.DEFINE_bool("scale_lr", False, "Linear scaling rule: every LR times --batch_size / the recipe's batch size.")
flags.DEFINE_integer("crash_after_steps", None, "Test hook: fail after this many training steps of this process.")
config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/repvgg_a0.py:imagenet "
                                "(default: configs/<model family>.py, embedded variant).")
FLAGS = flags.FLAGS


class UsageError(Exception):
    """A bad command line; reported as one line on stderr with exit code 2."""


def recipe_module(model):
    """``configs`` module of a zoo model (``ecbsr_m4c16_x4`` -> ``repq.configs.ecbsr_m4c16``)."""
    family = model.split("_x")[0] if model.startswith("ecbsr") else model
    try:
        return importlib.import_module(f"repq.configs.{family}")
    except ModuleNotFoundError as err:
        raise UsageError(f"no recipe for model {model!r} (configs/{family}.py); pass --config.") from err


def check_flags():
    """Validate the command line; returns (weight_bits, act_bits)."""
    from repq import models
    from repq.distribute import STRATEGIES
    from repq.quantizers import MAX_BITS, MIN_BITS, integer_range

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
            raise UsageError(f"--{name}={bits}: bit width must be an integer in [{MIN_BITS}, {MAX_BITS}].") \
                from err
    if FLAGS.method == "tfmot8" and (w_bits, a_bits) != (8, 8):
        raise UsageError("--method=tfmot8 is tfmot's 8-bit scheme; use --bits 8.")
    if FLAGS.fp_checkpoint and not os.path.isfile(FLAGS.fp_checkpoint):
        raise UsageError(f"--fp_checkpoint {FLAGS.fp_checkpoint!r} does not exist.")
    if FLAGS.bnest and FLAGS.model.startswith("ecbsr"):
        raise UsageError("ECBSR has no BatchNorm; --bnest does not apply.")
    if FLAGS.bnest_padding_aware and not FLAGS.bnest:
        raise UsageError("--bnest_padding_aware changes how BN estimation estimates: use it with --bnest.")
    if FLAGS.strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {FLAGS.strategy!r}; choose one of: {', '.join(STRATEGIES)}.")
    if FLAGS.num_cpu_devices is not None and FLAGS.num_cpu_devices < 1:
        raise UsageError(f"--num_cpu_devices={FLAGS.num_cpu_devices} must be >= 1.")
    for name in ("epochs", "fp_epochs", "batch_size", "limit"):
        value = getattr(FLAGS, name)
        if value is not None and value < (0 if name.endswith("epochs") else 1):
            raise UsageError(f"--{name}={value} must be {'>= 0' if name.endswith('epochs') else '>= 1'}.")
    freeze_bn_override()  # a bad --freeze_bn_after is a usage error before any work
    if FLAGS.bn_variance_floor and (FLAGS.method != "repq" or FLAGS.bnest or FLAGS.model.startswith("ecbsr")):
        raise UsageError("--bn_variance_floor changes how RepQ-BN folds its branch BatchNorms: use it with "
                         "--method=repq on a model with BatchNorm, without --bnest.")
    if FLAGS.ptq_init is not None:
        from repq.ptq import METHODS as PTQ_METHODS
        if FLAGS.ptq_init not in PTQ_METHODS:
            raise UsageError(f"unknown --ptq_init method {FLAGS.ptq_init!r}; choose one of: {', '.join(PTQ_METHODS)}.")
        if FLAGS.method != "merged_lsq" or FLAGS.strategy != "default":
            raise UsageError("--ptq_init starts merged QAT from a PTQ result: use it with --method=merged_lsq "
                             "(and --strategy=default).")
        for name in ("ptq_iters", "ptq_calib_size"):
            if getattr(FLAGS, name) < 1:
                raise UsageError(f"--{name}={getattr(FLAGS, name)} must be >= 1.")
    if FLAGS.method == "tfmot8" and FLAGS.strategy != "default":
        raise UsageError("--method=tfmot8 runs in a tf_keras subprocess and supports only --strategy=default.")
    return w_bits, a_bits


def freeze_bn_override():
    """``--freeze_bn_after`` read: ``(given, epochs)``, epochs an int >= 0 or None for 'never'."""
    value = FLAGS.freeze_bn_after
    if value is None:
        return False, None
    if value == "never":
        return True, None
    if not value.isdigit():
        raise UsageError(f"--freeze_bn_after={value}: give a number of QAT epochs >= 0, or 'never'.")
    return True, int(value)


def load_recipe():
    recipe = FLAGS.config if FLAGS.config is not None else recipe_module(FLAGS.model).get_config()
    recipe = recipe.copy_and_resolve_references()
    reference_batch = recipe.batch_size
    if FLAGS.dataset:
        recipe.data.name = FLAGS.dataset
    if FLAGS.epochs is not None:
        recipe.qat_epochs = FLAGS.epochs
    if FLAGS.bnest and recipe.get("bnest_fp_epochs") is not None:
        recipe.fp_epochs = recipe.bnest_fp_epochs
    if FLAGS.bnest and recipe.get("bnest_fp_lr") is not None:
        recipe.lr.fp = recipe.bnest_fp_lr
    if FLAGS.bnest and "bnest_freeze_bn_after" in recipe:
        recipe.freeze_bn_after = recipe.bnest_freeze_bn_after
    given, freeze_after = freeze_bn_override()
    if given:
        recipe.freeze_bn_after = freeze_after
    if FLAGS.bn_variance_floor is not None:
        with recipe.unlocked():
            recipe.bn_variance_floor = FLAGS.bn_variance_floor
    if FLAGS.fp_epochs is not None:
        recipe.fp_epochs = FLAGS.fp_epochs
    if FLAGS.batch_size is not None:
        recipe.batch_size = FLAGS.batch_size
    if FLAGS.scale_lr:
        from repq.distribute import scaled_learning_rates

        for key, value in scaled_learning_rates(dict(recipe.lr), recipe.batch_size, reference_batch).items():
            recipe.lr[key] = value
    if FLAGS.limit is not None:
        recipe.data.limit_train = recipe.data.limit_test = FLAGS.limit
        recipe.steps_per_epoch = None
    return with_model_scale(recipe, FLAGS.model)


def with_model_scale(recipe, model):
    """``recipe`` with the SR scale its model name gives (``ecbsr_m4c16_x4`` -> 4; classifiers unchanged)."""
    from repq import models

    sr_scale = models.model_defaults(model).sr_scale
    if sr_scale is not None:
        recipe.data.scale = sr_scale
    return recipe


def load_data(recipe, shard=False):
    """-> (make_train, test dataset, DatasetInfo). ``make_train(shard)`` builds a fresh, un-iterated
    train pipeline (each stage and the calibration batch get their own, so the data stream of a
    stage does not depend on what ran before it: resumed runs see the same batches)."""
    from repq.data import get_dataset
    from repq.distribute import shard_by_data

    kwargs = dict(data_dir=FLAGS.data_dir, seed=FLAGS.seed)
    if recipe.task == "super_resolution":
        kwargs.update(scale=recipe.data.scale, patch_size=recipe.data.patch_size,
                      repeat_patches=recipe.data.repeat_patches)

    def make_train(shard=shard):
        train, _ = get_dataset(recipe.data.name, "train", recipe.batch_size, limit=recipe.data.limit_train, **kwargs)
        return shard_by_data(train) if shard else train

    try:
        train, info = get_dataset(recipe.data.name, "train", recipe.batch_size, limit=recipe.data.limit_train, **kwargs)
        test, _ = get_dataset(recipe.data.name, "test", recipe.batch_size, limit=recipe.data.limit_test, **kwargs)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        raise UsageError(str(err)) from err
    if info.task != recipe.task:
        raise UsageError(f"dataset {info.name!r} is for {info.task}, model {FLAGS.model!r} for {recipe.task}.")
    del train
    return make_train, (shard_by_data(test) if shard else test), info


def quantize_config(recipe, model):
    """The recipe's optional ``quantize`` field as a :class:`repq.QuantizeConfig` checked against the
    FP ``model`` (None without the field); a bad field is a UsageError."""
    from repq.qat import QuantizeConfig
    from repq.qat.transform import check_config

    if "quantize" not in recipe:
        return None
    if FLAGS.method not in ("repq", "fp"):
        raise UsageError(f"the recipe's quantize field (per-layer bits) applies to --method=repq, not "
                         f"--method={FLAGS.method}.")
    try:
        config = QuantizeConfig.from_dict(recipe.quantize.to_dict())
        check_config(model, config)
    except (TypeError, ValueError) as err:
        raise UsageError(f"recipe field quantize: {err}") from err
    return config


def create_zoo_model(recipe, info):
    from repq import models

    if recipe.task == "super_resolution":  # upscales by its registry entry's sr_scale (recipe.data.scale)
        return models.create_model(FLAGS.model)
    return models.create_model(FLAGS.model, num_classes=info.num_classes, input_shape=info.image_shape,
                               norm_mode="bnest" if FLAGS.bnest else "bn", stem=recipe.stem,
                               bnest_padding_aware=FLAGS.bnest_padding_aware)


def weight_shapes(model):
    return sorted(tuple(int(d) for d in w.shape) for w in model.weights)


def check_fp_checkpoint(model, reference, path):
    """Raise UsageError unless the loaded --fp_checkpoint has the architecture of --model on this data."""
    got_in, want_in = tuple(model.input_shape[1:]), tuple(reference.input_shape[1:])
    if len(got_in) != len(want_in) or any(g is not None and w is not None and g != w for g, w in zip(got_in, want_in)):
        raise UsageError(f"--fp_checkpoint {path} takes inputs {got_in}, but --model {FLAGS.model} on "
                         f"{FLAGS.dataset or 'the recipe dataset'} needs {want_in}; pass the matching --model/--dataset.")
    got_out, want_out = tuple(model.output_shape[1:]), tuple(reference.output_shape[1:])
    if got_out[-1:] != want_out[-1:]:
        raise UsageError(f"--fp_checkpoint {path} outputs {got_out}, but --model {FLAGS.model} on this dataset "
                         f"outputs {want_out} (another number of classes?).")
    if weight_shapes(model) != weight_shapes(reference):
        raise UsageError(f"--fp_checkpoint {path} is not a {FLAGS.model}{' (BNEst)' if FLAGS.bnest else ''} model "
                         f"({len(model.weights)} weights, the zoo model has {len(reference.weights)} of other shapes); "
                         "pass the matching --model (and --bnest).")
    if FLAGS.bnest and padding_aware_blocks(model) != padding_aware_blocks(reference):
        raise UsageError(f"--fp_checkpoint {path} was trained {'with' if padding_aware_blocks(model) else 'without'} "
                         "--bnest_padding_aware; pass the same setting as its FP training.")


def padding_aware_blocks(model):
    """Names of the BNEst blocks of ``model`` that estimate with the padding counted."""
    from repq.models.registry import bnest_blocks

    return sorted(block.name for block in bnest_blocks(model) if block.bnest_padding_aware)


def check_writable(output_dir):
    """Check that ``output_dir`` may hold this run (``repq.outputs.check_run_dir``: new, empty or a
    train.py run directory), create it with its marker and check that files can be written there,
    before any training."""
    from repq.outputs import OutputError, prepare_run_dir

    try:
        prepare_run_dir(output_dir, "train")
        probe = os.path.join(output_dir, f".write_probe.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OutputError as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError(f"output directory {output_dir!r} is not writable ({err.strerror or err}); "
                         "pass a writable --output_dir.") from err


RUN_KEYS = ("model", "method", "bnest", "seed", "fp_checkpoint")


def check_run_config(output_dir, w_bits, a_bits, recipe, write):
    """Refuse to resume into a run directory holding results made with other settings; record
    the settings otherwise (a directory without results takes the new ones, with a note)."""
    from repq.training import check_run_config as guard

    config = {key: getattr(FLAGS, key) for key in RUN_KEYS}
    config.update(weight_bits=w_bits, act_bits=a_bits, recipe=recipe.to_dict())
    if FLAGS.bnest_padding_aware:  # only when set: run directories of earlier versions stay resumable
        config.update(bnest_padding_aware=True)
    if FLAGS.ptq_init:  # only when set: run directories of earlier versions stay resumable
        config.update({key: getattr(FLAGS, key) for key in ("ptq_init", "ptq_iters", "ptq_calib_size")})
    note = guard(output_dir, config, write)
    if note:
        print(f"train.py: {note}", file=sys.stderr)


def tfmot8_command(recipe, merged_path, result_path, seed, data_dir=None):
    """The ``repq.baselines.tfmot8`` command line for ``recipe``: its data, epochs, merged-8-bit LR,
    optimizer, schedule and warmup, weight decay and label smoothing."""
    cmd = [sys.executable, "-m", "repq.baselines.tfmot8", f"--deploy_model={merged_path}",
           f"--output={result_path}", f"--dataset={recipe.data.name}", f"--task={recipe.task}",
           f"--scale={recipe.data.scale}", f"--epochs={recipe.qat_epochs}", f"--lr={recipe.lr.merged8}",
           f"--optimizer={recipe.optimizer}", f"--momentum={recipe.momentum}", f"--batch_size={recipe.batch_size}",
           f"--schedule={recipe.schedule}", f"--warmup_epochs={recipe.warmup_epochs}",
           f"--weight_decay={recipe.weight_decay}", f"--label_smoothing={recipe.label_smoothing}", f"--seed={seed}"]
    for flag, value in (("limit", recipe.data.limit_train), ("steps_per_epoch", recipe.steps_per_epoch),
                        ("data_dir", data_dir), ("patch_size", recipe.data.patch_size)):
        if value:
            cmd.append(f"--{flag}={value}")
    return cmd


def child_env():
    """The environment for a ``python -m repq...`` child process that imports the same repq as this
    process (a checkout or the installed package)."""
    import repq

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(repq.__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))


def run_tfmot8(fp_model, recipe, output_dir):
    """tfmot 8-bit QAT of the merged model in a subprocess (tfmot flips TF to tf_keras)."""
    import json

    import repq
    from repq.graph import flatten_model
    from repq.training import save_model

    merged_path = os.path.join(output_dir, "merged_fp_model.keras")
    save_model(flatten_model(repq.reparametrize(fp_model)), merged_path)
    result_path = os.path.join(output_dir, "tfmot8.json")
    cmd = tfmot8_command(recipe, merged_path, result_path, FLAGS.seed, FLAGS.data_dir)
    subprocess.run(cmd, check=True, env=child_env())
    with open(result_path) as f:
        return json.load(f)


def ptq_initialised(fp_model, train_ds, w_bits, a_bits, score, results):
    """A merged QAT model that starts from ``--ptq_init`` PTQ of ``fp_model`` (the PTQ model itself, a QAT-format
    model with PTQ's first/last-layer rule: 8-bit first and last layers); the PTQ model's metric goes to
    ``results["metrics"]["ptq"]``."""
    import numpy as np

    from repq.ptq import quantize_ptq

    images, count = [], 0
    for x, _ in train_ds:
        images.append(np.asarray(x))
        count += len(images[-1])
        if count >= FLAGS.ptq_calib_size:
            break
    calib = np.concatenate(images)[:FLAGS.ptq_calib_size]
    stage(f"PTQ initialisation ({FLAGS.ptq_init}, W{w_bits}A{a_bits}): {len(calib)} calibration images, "
          f"{FLAGS.ptq_iters} iterations per unit")
    ptq_model, _ = quantize_ptq(fp_model, calib, FLAGS.ptq_init, w_bits, a_bits, iters=FLAGS.ptq_iters,
                                batch_size=min(32, len(calib)), seed=FLAGS.seed, verbose=1)
    results["metrics"]["ptq"] = score(ptq_model)
    return ptq_model


def results_markdown(results):
    unit = "top-1 (%)" if results["task"] == "classification" else "PSNR-Y (dB)"
    lines = [f"# {results['model']} {results['method']} W{results['weight_bits']}A{results['act_bits']}"
             f"{' BNEst' if results['bnest'] else ''} on {results['dataset']}", "",
             f"| model | {unit} |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in results["metrics"].items()]
    if "integer" in results["metrics"]:
        lines += ["", "integer: the int8 TFLite model (LiteRT default runtime), computed bit-exactly by "
                      "repq.integer_predict."]
    elif "integer_skipped" in results:
        lines += ["", f"integer: not computed ({results['integer_skipped']})"]
    if "deploy_matches_qat" in results:
        lines += ["", f"Deploy model equals QAT model: {results['deploy_matches_qat']} "
                      f"(max |diff| on one test batch: {results['deploy_max_abs_diff']:.3g})."]
    return "\n".join(lines) + "\n"


def stage(message):
    """One progress line on stderr (stage headers of a long run)."""
    print(f"train.py: {message}", file=sys.stderr, flush=True)


def verdict(metric, fp, quantized, bits):
    """-> (kept, one line) saying whether the quantized model kept the FP metric within the claim's tolerance."""
    from repq.claims import keeps_fp, tolerance as allowed_drop

    tolerance = allowed_drop(metric, bits)
    unit = " pt" if metric == "top1" else " dB"
    kept = keeps_fp(quantized - fp, tolerance)
    return kept, (f"{bits}-bit model {'KEPT' if kept else 'did NOT keep'} the FP {metric}: {quantized:.2f} vs FP "
                  f"{fp:.2f} ({quantized - fp:+.2f}{unit}; tolerance {tolerance}{unit}).")


def run(w_bits, a_bits):
    from repq.distribute import StrategyError, check_global_batch, get_strategy, is_chief

    try:  # first: logical CPU devices must be configured before TF initialises its devices
        strategy = get_strategy(FLAGS.strategy, FLAGS.num_cpu_devices, FLAGS.tpu)
    except StrategyError as err:
        raise UsageError(str(err)) from err

    import keras
    import numpy as np

    import repq
    from repq import models
    from repq.baselines import merged_lsq_model
    from repq.callbacks import NaNGuard
    from repq.qat import calibrate, quantize_model
    from repq.training import evaluate, fit_model, load_model, save_model, write_json, write_text
    from repq.training.evaluation import bicubic_upscale

    keras.utils.set_random_seed(FLAGS.seed)
    recipe = load_recipe()
    try:
        check_global_batch(recipe.batch_size, strategy.num_replicas_in_sync)
    except StrategyError as err:
        raise UsageError(str(err)) from err
    multi_worker = FLAGS.strategy == "multi_worker"
    chief = is_chief(strategy)
    output_dir = FLAGS.output_dir or os.path.join(
        "runs", f"{FLAGS.model}_{FLAGS.method}_w{w_bits}a{a_bits}{'_bnest' if FLAGS.bnest else ''}")
    stage(f"run directory {output_dir}")
    stage(f"loading {recipe.data.name}")
    make_train, test_ds, info = load_data(recipe, shard=multi_worker)
    if chief:
        check_writable(output_dir)
    check_run_config(output_dir, w_bits, a_bits, recipe, write=chief)
    metric = "top1" if recipe.task == "classification" else "psnr"

    def save(model, name):
        if chief:
            save_model(model, os.path.join(output_dir, name))

    def score(model):
        return evaluate(model, test_ds, recipe.task, recipe.data.scale)[metric]

    def score_integer(model):
        """The integer TFLite model's metric, computed bit-exactly without converting (repq.integer_predict);
        None (and why, in results) when the integer export does not support the model."""
        from repq.export import ExportError, export_graph, integer_emulation, integer_predict
        try:
            program = integer_emulation.Program(export_graph(model)[0])
        except ExportError as err:
            results["integer_skipped"] = str(err)
            return None
        predict = lambda x: integer_predict(model, np.asarray(x), graph=program)  # noqa: E731
        return evaluate(model, test_ds, recipe.task, recipe.data.scale, predict=predict,
                        progress="integer model (repq.integer_predict)")[metric]

    def guard(stage):
        def last_good():
            state = os.path.join(output_dir, "backup", stage, "state.json")
            return state if os.path.exists(state) else f"none for this stage ({stage} starts from scratch)"
        return NaNGuard(checkpoint=last_good)

    def finished(name):
        """A finished stage's artefact, loaded (None if absent); a corrupt one is an error."""
        path = os.path.join(output_dir, name)
        if not os.path.exists(path):
            return None
        with strategy.scope():
            model = load_model(path, hint="delete it to redo that stage")
        print(f"train.py: {name} exists: stage already done, loaded {path}", file=sys.stderr)
        return model

    fit_kwargs = dict(output_dir=output_dir, write_checkpoints=chief, crash_after_steps=FLAGS.crash_after_steps)
    times = {}
    run_start = start = time.time()
    if FLAGS.fp_checkpoint:
        with strategy.scope():
            fp_model = load_model(FLAGS.fp_checkpoint, hint="pass a complete .keras file saved by train.py")
        check_fp_checkpoint(fp_model, create_zoo_model(recipe, info), FLAGS.fp_checkpoint)
    else:
        fp_model = finished("fp_model.keras")
        if fp_model is None:
            stage(f"FP training: {recipe.fp_epochs} epochs")
            with strategy.scope():
                fp_model = create_zoo_model(recipe, info)
                quantize_config(recipe, fp_model)  # a bad field fails now, not after FP training
                fit_model(fp_model, make_train(), test_ds, recipe, "fp", callbacks=[guard("fp")], **fit_kwargs)
            save(fp_model, "fp_model.keras")
    models.set_registry_name(fp_model, FLAGS.model)  # a loaded model quantizes with --model's defaults too
    times["fp_s"] = time.time() - start
    stage("evaluating the FP model")
    results = dict(model=FLAGS.model, method=FLAGS.method, weight_bits=w_bits, act_bits=a_bits, bnest=FLAGS.bnest,
                   dataset=recipe.data.name, task=recipe.task, metric=metric, recipe=recipe.to_dict(),
                   strategy=FLAGS.strategy, replicas=int(strategy.num_replicas_in_sync),
                   metrics={"fp": score(fp_model)})
    if recipe.task == "super_resolution":  # the baseline the FP model must beat, on the same images
        results["metrics"]["bicubic"] = evaluate(None, test_ds, recipe.task, recipe.data.scale,
                                                 predict=bicubic_upscale(recipe.data.scale))[metric]
    start = time.time()
    if FLAGS.method == "tfmot8":
        results["metrics"]["tfmot8"] = run_tfmot8(fp_model, recipe, output_dir)[metric]
    elif FLAGS.method != "fp":
        qat = finished("qat_model.keras")
        if qat is None:
            stage(f"QAT ({FLAGS.method}, W{w_bits}A{a_bits}): calibration, then {recipe.qat_epochs} epochs")
            with strategy.scope():
                if FLAGS.method == "repq":
                    qat = quantize_model(fp_model, w_bits, a_bits, bn="bnest" if FLAGS.bnest else "repq",
                                         config=quantize_config(recipe, fp_model),
                                         bn_variance_floor=recipe.get("bn_variance_floor", False))
                elif FLAGS.ptq_init:
                    qat = ptq_initialised(fp_model, make_train(shard=False), w_bits, a_bits, score, results)
                else:
                    qat = merged_lsq_model(fp_model, w_bits, a_bits)
                # LSQ steps are initialised eagerly from one (un-sharded, identical on every worker)
                # train batch: replicas never write them inside the train step.
                calibrate(qat, next(iter(make_train(shard=False)))[0])
                fit_model(qat, make_train(), test_ds, recipe, "qat", weight_bits=w_bits,
                          callbacks=[guard("qat")], **fit_kwargs)
            save(qat, "qat_model.keras")
        stage("merging the deploy model; evaluating QAT, deploy and integer models")
        deploy = repq.reparametrize(qat)
        save(deploy, "deploy_model.keras")
        results["metrics"].update(qat=score(qat), deploy=score(deploy))
        integer = score_integer(qat)
        if integer is not None:
            results["metrics"]["integer"] = integer
        x = next(iter(test_ds))[0]
        diff = float(np.max(np.abs(np.asarray(qat(x, training=False)) - np.asarray(deploy(x, training=False)))))
        results.update(deploy_max_abs_diff=diff,
                       deploy_matches_qat=results["metrics"]["qat"] == results["metrics"]["deploy"])
    times["qat_s"] = time.time() - start
    times["total_s"] = time.time() - run_start
    results["times"] = times
    quantized = results["metrics"].get("qat", results["metrics"].get("tfmot8"))
    if quantized is not None:
        results["kept_fp_accuracy"], results["verdict"] = verdict(
            metric, results["metrics"]["fp"], quantized, min(w_bits, a_bits))
    table = results_markdown(results)
    if chief:
        write_json(os.path.join(output_dir, "results.json"), results)
        write_text(os.path.join(output_dir, "results.md"), table)
    print(table)
    if "verdict" in results:
        print(results["verdict"])
    print(f"train.py: done in {times['total_s']:.0f} s; results in {os.path.join(output_dir, 'results.md')}")
    return results


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    return run(*check_flags())


def error_exit(message, code):
    print(f"train.py: error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv):
    """``app.run``'s flags parser: a bad flag (absl's errors included) is one line and exit code 2."""
    from repq.cli_env import exit_on_help

    exit_on_help(argv, __doc__, FLAGS, __name__)
    try:
        return FLAGS(argv)
    except flags.Error as err:
        from repq.cli_env import flag_error_line

        error_exit(flag_error_line(err, "train.py"), 2)
    except (AttributeError, KeyError, TypeError, ValueError) as err:  # ml_collections on a --config.X override
        overrides = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--config.")]
        reason = str(err).strip().strip("\"'") or type(err).__name__
        error_exit(f"bad recipe override {' '.join(overrides) or '--config'}: no field or wrong type ({reason}); "
                   "the fields are the keys of the --config file's get_config().", 2)


def cli(argv):
    from repq.callbacks import NonFiniteError
    from repq.training import CheckpointError, SimulatedCrash, TrainingInterrupted, os_error_line

    try:
        main(argv)
    except (UsageError, CheckpointError) as err:
        if FLAGS.verbose_errors:
            raise
        error_exit(err, 2)
    except TrainingInterrupted as err:
        error_exit(f"interrupted ({err}); the last epoch checkpoint is kept: rerun the same command to resume.",
                   128 + err.signum)
    except KeyboardInterrupt:  # Ctrl-C outside a training stage (loading, evaluation, export)
        error_exit("interrupted (Ctrl-C); finished stages and the last epoch checkpoint are kept: rerun the same "
                   "command to resume.", 130)
    except (NonFiniteError, SimulatedCrash) as err:
        if FLAGS.verbose_errors:
            raise
        error_exit(f"{err}. Rerun the same command to resume from the last checkpoint.", 1)
    except OSError as err:  # full disk, permissions, ... (earlier artefacts are intact: writes are atomic)
        if FLAGS.verbose_errors:
            raise
        error_exit(os_error_line(err), 1)


def console_main():
    """Entry point of ``repq-train`` and ``python train.py``."""
    app.run(cli, flags_parser=parse_flags)


if __name__ == "__main__":
    console_main()
