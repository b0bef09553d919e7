"""Merged 8-bit baseline: tfmot's default 8-bit QAT of the merged (deploy) float model.

Importing ``tensorflow_model_optimization`` switches the process to legacy tf_keras, so
it is imported lazily and this module is meant to run as its own process::

  python -m repq.baselines.tfmot8 --deploy_model=RUN/merged_fp_model.keras --output=RUN/tfmot8.json \
      --dataset=mnist5k --task=classification --epochs=2 --lr=0.001

The Keras 3 deploy model (``flatten_model(repq.reparametrize(fp_model))``) is rebuilt
layer by layer in tf_keras from its weights: ``PaddedConv2D`` -> ``ZeroPadding2D`` +
``Conv2D('valid')``; ``Dense``, ``ReLU``, ``Add``, pooling and ``PReLU`` map to their
tf_keras twins; ``PixelShuffleResidual`` -> a ``Lambda`` (``depth_to_space(f + lr)``).
Every layer tfmot's default 8-bit registry supports is annotated; the rest (PReLU, the
Lambda) stay float, as tfmot leaves them. Training: the recipe (Table S1) at the merged-8-bit LR,
as train.py passes it: optimizer, LR schedule per iteration with its warmup (tf_keras
``CosineDecay``), coupled L2 weight decay on the conv/dense kernels (the recipe's ``no_decay``
kinds, biases and quantizer ranges, are not decayed) and label smoothing. Before QAT the activation
ranges are calibrated on a few training batches (:func:`calibrate_ranges`): tfmot starts them at
[-6, 6], which left ECBSR near bicubic after a short QAT run (benchmarks/tfmot_ranges.py).
The result (``{"top1": %}`` or ``{"psnr": dB}``, the same metric as QAT starts, after the range
calibration, as ``<metric>_before_qat``, and the float model's as ``<metric>_float``) is written as
JSON to ``--output``.
"""

import json

import tensorflow as tf
from absl import app, flags

flags.DEFINE_string("deploy_model", None, "Merged Keras 3 float model (.keras).")
flags.DEFINE_string("output", None, "Result JSON path.")
flags.DEFINE_string("dataset", "mnist5k", "repq.data dataset.")
flags.DEFINE_string("data_dir", None, "tfds data_dir.")
flags.DEFINE_string("task", "classification", "classification | super_resolution.")
flags.DEFINE_integer("scale", 2, "SR scale.")
flags.DEFINE_integer("patch_size", None, "SR HR patch size.")
flags.DEFINE_integer("epochs", 1, "Training epochs.")
flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (None: one pass).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("limit", None, "Examples per split (smoke tests).")
flags.DEFINE_float("lr", 0.001, "Learning rate (Table S1 merged 8-bit LR).")
flags.DEFINE_string("optimizer", "sgd", "sgd | adam.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_enum("schedule", "cosine", ["warmup_cosine", "cosine", "constant"],
                  "LR schedule, stepped per iteration (the recipe's).")
flags.DEFINE_float("warmup_epochs", 0.0, "Linear warmup from 0 (with --schedule=warmup_cosine).")
flags.DEFINE_float("weight_decay", 0.0, "Coupled L2 weight decay on conv/dense kernels (the recipe's).")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing of the classification loss (the recipe's).")
flags.DEFINE_integer("range_calibration_batches", 8, "Training batches that set the activation ranges before "
                     "QAT (0: keep tfmot's initial [-6, 6]; see calibrate_ranges).")
flags.DEFINE_integer("seed", 0, "Random seed.")
FLAGS = flags.FLAGS


def depth_to_space_residual(tensors, scale):
    """``depth_to_space(features + lr, scale)``: ECBSR's output stage as a tf_keras Lambda."""
    return tf.nn.depth_to_space(tensors[0] + tensors[1], scale)


def _translate(layer, tf_keras):
    """tf_keras layers (a list, applied in order) computing the Keras 3 ``layer``; None if it is an input."""
    import keras

    from repq.layers import PaddedConv2D, PixelShuffleResidual
    from repq.models.resnet import PaddedMaxPool

    name = layer.name
    if isinstance(layer, keras.layers.InputLayer):
        return None
    if isinstance(layer, keras.layers.Conv2D):
        pad = getattr(layer, "pad", 0)
        out = [tf_keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")] if pad else []
        conv = tf_keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                                      padding="valid" if isinstance(layer, PaddedConv2D) else layer.padding,
                                      groups=layer.groups, activation=keras.activations.serialize(layer.activation),
                                      use_bias=layer.use_bias, name=name)
        return out + [conv]
    if isinstance(layer, keras.layers.Dense):
        return [tf_keras.layers.Dense(layer.units, activation=keras.activations.serialize(layer.activation),
                                      use_bias=layer.use_bias, name=name)]
    if isinstance(layer, keras.layers.PReLU):
        return [tf_keras.layers.PReLU(shared_axes=layer.shared_axes, name=name)]
    if isinstance(layer, PixelShuffleResidual):
        return [tf_keras.layers.Lambda(depth_to_space_residual, arguments={"scale": layer.scale}, name=name)]
    if type(layer) is keras.layers.ReLU:
        return [tf_keras.layers.ReLU(layer.max_value, layer.negative_slope, layer.threshold, name=name)]
    if type(layer) is keras.layers.Add:
        return [tf_keras.layers.Add(name=name)]
    if type(layer) is keras.layers.GlobalAveragePooling2D:
        return [tf_keras.layers.GlobalAveragePooling2D(name=name)]
    if isinstance(layer, PaddedMaxPool):  # the ResNets' imagenet stem: symmetric zero padding 1, then valid
        return [tf_keras.layers.ZeroPadding2D(1, name=f"{name}_pad"),
                tf_keras.layers.MaxPooling2D(layer.pool_size, layer.strides, "valid", name=name)]
    if type(layer) is keras.layers.MaxPooling2D:
        return [tf_keras.layers.MaxPooling2D(layer.pool_size, layer.strides, layer.padding, name=name)]
    raise ValueError(f"tfmot8: no tf_keras translation for layer {name!r} ({type(layer).__name__}).")


def build_tf_keras_model(model, tf_keras):
    """The tf_keras twin of a flat functional Keras 3 model, with its weights."""
    import keras

    from repq.graph import call_nodes

    mapping = {id(t): tf_keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in model.inputs}
    inputs = [mapping[id(t)] for t in model.inputs]
    for node in call_nodes(model):
        layers = _translate(node.operation, tf_keras)
        if layers is None:
            continue
        args = [mapping[id(t)] for t in node.input_tensors]
        out = args[0] if len(args) == 1 else args
        for twin in layers:
            out = twin(out)
        if node.operation.weights:
            layers[-1].set_weights([keras.ops.convert_to_numpy(w) for w in node.operation.weights])
        mapping[id(node.output_tensors[0])] = out
    return tf_keras.Model(inputs, [mapping[id(t)] for t in model.outputs][0], name=model.name)


def quantize(model):
    """tfmot default 8-bit QAT of every layer its registry supports."""
    import tensorflow_model_optimization as tfmot
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry)

    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def clone(layer):
        return annotate(layer.__class__.from_config(layer.get_config())) if registry.supports(layer) else \
            layer.__class__.from_config(layer.get_config())

    import tf_keras
    tf_keras.__internal__.enable_unsafe_deserialization()  # clones our own in-memory Lambda (ECBSR output)
    annotated = tf_keras.models.clone_model(model, clone_function=clone)
    annotated.set_weights(model.get_weights())
    return tfmot.quantization.keras.quantize_apply(annotated)


def calibrate_ranges(q_model, images):
    """Set the activation ranges of tfmot's quantized ``q_model`` from data before QAT.

    tfmot starts every activation range at [-6, 6] and moves it by an EMA with decay 0.999, which
    after 200 steps still holds 82 % of the start: ECBSR's activations (up to about +-280 on
    [0, 255] images) stay clipped for the whole of a short QAT run. Here each range becomes the mean
    of its batch ranges over ``images`` (a list of ``(N, H, W, C)`` batches): tfmot's EMA runs with
    decay ``n / (n + 1)`` on batch ``n``, one forward pass per batch, so every range sees its input
    already quantized with the ranges before it. (The input quantizer starts at [0, 0] and widens to
    the data on its own.)
    """
    from unittest import mock

    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    moving_average = quant_ops.MovingAvgQuantize
    for n, x in enumerate(images):
        def running_mean(*args, ema_decay, **kwargs):
            return moving_average(*args, ema_decay=n / (n + 1), **kwargs)

        with mock.patch.object(quant_ops, "MovingAvgQuantize", running_mean):
            q_model(x, training=True)  # eager: the patched EMA is read at every call


def learning_rate(tf_keras, total_steps, warmup_steps):
    """The recipe's schedule in tf_keras: ``constant``, ``cosine`` to 0, or ``warmup_cosine`` (linear from 0
    to ``--lr`` over ``warmup_steps``, then cosine to 0 at ``total_steps``)."""
    if FLAGS.schedule == "constant":
        return FLAGS.lr
    warmup = min(warmup_steps, total_steps - 1) if FLAGS.schedule == "warmup_cosine" else 0
    if not warmup:
        return tf_keras.optimizers.schedules.CosineDecay(FLAGS.lr, total_steps)
    return tf_keras.optimizers.schedules.CosineDecay(0.0, total_steps - warmup, warmup_target=FLAGS.lr,
                                                     warmup_steps=warmup)


def quantize_train_and_evaluate(float_model, tf_keras):
    """Quantize the tf_keras ``float_model``, calibrate its ranges, QAT with the recipe, evaluate ->
    ``{metric: after QAT, metric_before_qat: as QAT starts, metric_float: the float model}``."""
    from repq.data import get_dataset

    kwargs = dict(data_dir=FLAGS.data_dir, seed=FLAGS.seed, limit=FLAGS.limit)
    if FLAGS.task == "super_resolution":
        kwargs.update(scale=FLAGS.scale, patch_size=FLAGS.patch_size)
    train, _ = get_dataset(FLAGS.dataset, "train", FLAGS.batch_size, **kwargs)
    test, _ = get_dataset(FLAGS.dataset, "test", FLAGS.batch_size, **kwargs)
    steps = FLAGS.steps_per_epoch or sum(1 for _ in train)
    if FLAGS.steps_per_epoch:
        train = train.repeat()
    float_metric = evaluate(float_model, test)
    q_model = quantize(float_model)
    calibrate_ranges(q_model, [x for x, _ in train.take(FLAGS.range_calibration_batches)])
    before_qat = evaluate(q_model, test)  # the quantized model as QAT starts
    lr = learning_rate(tf_keras, max(steps * FLAGS.epochs, 1), int(FLAGS.warmup_epochs * steps))
    if FLAGS.optimizer == "sgd":
        optimizer = tf_keras.optimizers.SGD(lr, momentum=FLAGS.momentum)
    else:
        optimizer = tf_keras.optimizers.Adam(lr, epsilon=1e-8)  # PyTorch's Adam epsilon
    if FLAGS.task == "classification" and FLAGS.label_smoothing:
        classes = q_model.outputs[0].shape[-1]
        train = train.map(lambda x, y: (x, tf.one_hot(y, classes)))
        loss = tf_keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=FLAGS.label_smoothing)
    elif FLAGS.task == "classification":
        loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        loss = tf_keras.losses.MeanAbsoluteError()
    if FLAGS.weight_decay:
        kernels = [v for v in q_model.trainable_variables if v.name.split("/")[-1] == "kernel:0"]
        q_model.add_loss(lambda: 0.5 * FLAGS.weight_decay * tf.add_n([tf.reduce_sum(tf.square(k)) for k in kernels]))
    q_model.compile(optimizer=optimizer, loss=loss)
    q_model.fit(train, epochs=FLAGS.epochs, steps_per_epoch=steps, verbose=2)
    metric = "top1" if FLAGS.task == "classification" else "psnr"
    return {metric: evaluate(q_model, test), f"{metric}_before_qat": before_qat, f"{metric}_float": float_metric}


def evaluate(model, test):
    """Top-1 (%) or mean PSNR-Y (dB) of a tf_keras ``model`` on the ``test`` batches."""
    import numpy as np

    from repq.metrics import psnr_y

    values = []
    for x, y in test:
        out = model(x, training=False)
        values.append(np.argmax(out.numpy(), -1) == y.numpy() if FLAGS.task == "classification"
                      else psnr_y(out, y, FLAGS.scale).numpy())
    values = np.concatenate(values)
    return float(100 * values.mean()) if FLAGS.task == "classification" else float(values.mean())


def main(argv):
    del argv
    import keras

    import repq  # noqa: F401  (registers the repq layers for loading)
    from repq.training.artifacts import write_json

    keras.utils.set_random_seed(FLAGS.seed)
    float_model = keras.saving.load_model(FLAGS.deploy_model, compile=False)
    import tf_keras  # after Keras 3 is done loading
    tf_keras.utils.set_random_seed(FLAGS.seed)
    result = quantize_train_and_evaluate(build_tf_keras_model(float_model, tf_keras), tf_keras)
    write_json(FLAGS.output, result)
    print(json.dumps(result))


if __name__ == "__main__":
    flags.mark_flags_as_required(["deploy_model", "output"])
    app.run(main)
