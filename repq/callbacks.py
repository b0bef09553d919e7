"""Keras callbacks for RepQ QAT in a user's own ``model.fit``.

* :class:`StepSizeInitializer` - LSQ init of every quantizer from one batch before training.
* :class:`QuantizationLogger` - per-layer step sizes and weight quantization error to TensorBoard.
* :class:`BestDeployCheckpoint` - keep the best merged deploy model (``repq.reparametrize``).
* :class:`FreezeNormStatistics` - from a given epoch on, train on the deployed BN folding (moving statistics).
"""

import os

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from repq.graph import all_layers
from repq.qat import QuantRepConv, quantized_layers
from repq.quantizers import LSQQuantizer
from repq.reparam import reparametrize
from repq.training.artifacts import save_model


def _first_batch_inputs(data):
    """``x`` of the first batch of a dataset, or ``data`` itself (an array/tensor batch)."""
    if isinstance(data, tf.data.Dataset):
        data = next(iter(data))
    if isinstance(data, (tuple, list)):
        data = data[0]
    return data


def initialize_step_sizes(model, data):
    """Initialise every LSQ step of ``model`` from one batch (idempotent).

    Runs ``model(x, training=True)`` once, which initialises uninitialised
    quantizers from the tensors they see (LSQ: ``2 mean|x| / sqrt(qmax)``), then
    restores every other non-trainable variable (BatchNorm moving statistics),
    so the call has no side effect beyond the step sizes.

    Args:
      data: a batch ``x``, an ``(x, y)`` tuple or a ``tf.data.Dataset`` (first batch).
    """
    quantizer_vars = {id(v) for layer in all_layers(model)
                      if isinstance(layer, LSQQuantizer) for v in layer.variables}
    others = [v for v in model.non_trainable_variables if id(v) not in quantizer_vars]
    saved = [ops.convert_to_numpy(v) for v in others]
    model(_first_batch_inputs(data), training=True)
    for variable, value in zip(others, saved):
        variable.assign(value)


class StepSizeInitializer(keras.callbacks.Callback):
    """Initialise every LSQ step from ``data`` before the first training step.

    Without it, input quantizers initialise on the first training batch inside the
    first gradient step; with it, the steps are set before training starts (e.g. to
    log them or to use a dedicated calibration batch).

    Args:
      data: a batch ``x``, an ``(x, y)`` tuple or a ``tf.data.Dataset`` (its first batch).
    """

    def __init__(self, data):
        super().__init__()
        self.data = data

    def on_train_begin(self, logs=None):
        initialize_step_sizes(self.model, self.data)


def weight_quantization_error(wrapper):
    """``||Q(W) - W|| / ||W||`` of a QAT wrapper's (merged, inference-mode) kernel."""
    kernel, _ = wrapper.float_kernel_and_bias()
    quantized = wrapper.weight_quantizer(kernel, training=False)
    return float(ops.norm(ops.reshape(quantized - kernel, (-1,))) / ops.maximum(ops.norm(ops.reshape(kernel, (-1,))), 1e-12))


class QuantizationLogger(keras.callbacks.Callback):
    """Log per-layer LSQ step sizes and weight quantization error to TensorBoard.

    Scalars per QAT layer ``L``: ``L/weight_step_mean`` (mean of the per-channel steps),
    ``L/input_step`` and ``L/weight_error`` (``||Q(W) - W|| / ||W||``), plus a histogram
    ``L/weight_steps``. Written every ``every_n_epochs`` epochs, or every
    ``every_n_batches`` training batches if that is set.

    Args:
      log_dir: TensorBoard directory.
      every_n_epochs: epoch interval.
      every_n_batches: optional batch interval (overrides the epoch interval).
    """

    def __init__(self, log_dir, every_n_epochs=1, every_n_batches=None):
        super().__init__()
        self.log_dir, self.every_n_epochs, self.every_n_batches = log_dir, every_n_epochs, every_n_batches
        self._writer = None
        self._batches = 0

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "quantization"))

    def on_train_end(self, logs=None):
        self._writer.close()

    def log(self, step):
        """Write the current values at TensorBoard ``step``."""
        with self._writer.as_default():
            for layer in quantized_layers(self.model):
                steps = ops.convert_to_numpy(layer.weight_quantizer.positive_step())
                tf.summary.scalar(f"{layer.name}/weight_step_mean", float(np.mean(steps)), step=step)
                tf.summary.histogram(f"{layer.name}/weight_steps", steps, step=step)
                tf.summary.scalar(f"{layer.name}/weight_error", weight_quantization_error(layer), step=step)
                if layer.input_quantizer is not None:
                    tf.summary.scalar(f"{layer.name}/input_step",
                                      float(ops.convert_to_numpy(layer.input_quantizer.positive_step())), step=step)
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.every_n_batches and self._batches % self.every_n_batches == 0:
            self.log(self._batches)

    def on_epoch_end(self, epoch, logs=None):
        if not self.every_n_batches and (epoch + 1) % self.every_n_epochs == 0:
            self.log(epoch + 1)


class BestDeployCheckpoint(keras.callbacks.Callback):
    """Save the merged deploy model (``repq.reparametrize(model)``) whenever ``monitor`` improves.

    The file is written atomically (temporary file, then ``os.replace``).

    Args:
      path: ``.keras`` file.
      monitor: a metric in the epoch logs, e.g. "val_accuracy" or "val_psnr".
      mode: "max", "min" or "auto" (max unless the name contains "loss").
    """

    def __init__(self, path, monitor="val_accuracy", mode="auto"):
        super().__init__()
        if mode not in ("auto", "max", "min"):
            raise ValueError(f"Invalid value for argument `mode`. Expected 'auto', 'max' or 'min'. Received mode={mode!r}.")
        if mode == "auto":
            mode = "min" if "loss" in monitor else "max"
        self.path, self.monitor, self.mode = path, monitor, mode
        self.best = None

    def _improved(self, value):
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"BestDeployCheckpoint: metric {self.monitor!r} is not in the epoch logs "
                           f"({sorted(logs or {})}); pass validation data or change `monitor`.")
        if self._improved(float(value)):
            self.best = float(value)
            save_model(reparametrize(self.model), self.path)


def norm_folding_blocks(model):
    """The :class:`repq.qat.QuantRepConv` layers of ``model`` whose rep block folds a norm (BN, BNEst)."""
    return [layer for layer in quantized_layers(model)
            if isinstance(layer, QuantRepConv) and any(n is not None for n in layer.layer.norms)]


def set_norm_statistics_frozen(model, frozen):
    """Freeze (or unfreeze) the branch-norm statistics of every rep block of a QAT ``model``.

    Frozen, a :class:`repq.qat.QuantRepConv` folds its norms with their moving statistics in
    training too, so the training step computes the deployed kernel, and the moving statistics
    stay as they are. Returns the number of blocks affected. A compiled ``model`` needs a new
    train function afterwards (``model.make_train_function(force=True)``).
    """
    blocks = norm_folding_blocks(model)
    for layer in blocks:
        layer.norm_statistics_frozen = bool(frozen)
    return len(blocks)


class FreezeNormStatistics(keras.callbacks.Callback):
    """From epoch ``after_epochs`` on, fold every rep block's BN with its moving statistics in training.

    RepQ folds each branch norm with the statistics of the current batch (RepQ-BN) or their
    estimate (BNEst), so the trained kernel moves with every batch while the deployed one uses
    the moving statistics; at 4 bits a small scale change moves many weights to another grid
    point. Freezing the statistics once the network has adapted to quantization (the practice of
    BN-folding QAT, e.g. PyTorch's ``freeze_bn_stats``) trains the deployed computation itself.
    Measured in docs/training.md ("Freezing the BN statistics in QAT"). Training ends unfrozen.

    Args:
      after_epochs: epochs trained with batch statistics first (0: frozen from the start).
      verbose: 1 prints one line when the statistics are frozen (as Keras' ReduceLROnPlateau), 0 nothing.
    """

    def __init__(self, after_epochs, verbose=1):
        super().__init__()
        if int(after_epochs) != after_epochs or after_epochs < 0:
            raise ValueError(f"after_epochs must be an integer >= 0, got {after_epochs!r}.")
        self.after_epochs, self.verbose = int(after_epochs), verbose
        self._frozen = False

    def on_train_begin(self, logs=None):
        if not norm_folding_blocks(self.model):
            raise ValueError(f"FreezeNormStatistics: model {self.model.name!r} has no rep block that folds a "
                             "norm; use it on a RepQ QAT model of a BN or BNEst network (repq.quantize_model).")

    def _set(self, frozen):
        """Switch to ``frozen``; returns the number of blocks switched (0: already so)."""
        if frozen == self._frozen:
            return 0
        self._frozen = frozen
        count = set_norm_statistics_frozen(self.model, frozen)
        self.model.make_train_function(force=True)  # the traced step read the old setting
        return count

    def on_epoch_begin(self, epoch, logs=None):
        count = self._set(epoch >= self.after_epochs)
        if count and self._frozen and self.verbose:
            print(f"\nEpoch {epoch + 1}: FreezeNormStatistics: BN statistics frozen in {count} rep blocks "
                  "(moving statistics folded, as deployed).")

    def on_train_end(self, logs=None):
        self._set(False)


class NonFiniteError(FloatingPointError):
    """Raised by :class:`NaNGuard`: the loss or a variable became NaN/Inf."""


def non_finite_variables(model):
    """Paths of the model's variables holding NaN or Inf (quantizer steps first)."""
    bad = [v.path for v in model.variables if not np.all(np.isfinite(ops.convert_to_numpy(v)))]
    return sorted(bad, key=lambda path: (not path.endswith("/step"), path))


class NaNGuard(keras.callbacks.Callback):
    """Stop training at the first non-finite LSQ step or loss, naming the culprit layer.

    After every training batch every LSQ step size is checked first (cheap: steps are small
    vectors), then the loss in the logs. A NaN/Inf step is reported as such whatever the loss
    is: the forward pass reads a non-finite step as eps (``LSQQuantizer.positive_step``), so the
    loss can stay finite while the layer is broken, and the result does not depend on how an
    op propagates NaN. When the loss is NaN/Inf with finite steps, every variable is checked:
    the message names the first non-finite weight (its layer path), else says the weights are
    finite (the inputs, a too-high LR or an overflow in the forward pass are then the cause).
    Raises :class:`NonFiniteError`, with ``checkpoint`` (a path, or a callable returning one) as
    the last good state to resume from.

    Args:
      checkpoint: description of the last good checkpoint for the message (or None).
      monitor: log key to check (default "loss").
    """

    def __init__(self, checkpoint=None, monitor="loss"):
        super().__init__()
        self.checkpoint, self.monitor = checkpoint, monitor
        self._epoch, self._steps = 0, []

    def on_train_begin(self, logs=None):
        self._steps = [v for layer in all_layers(self.model)
                       if isinstance(layer, LSQQuantizer) for v in layer.trainable_variables]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _fail(self, batch, what, bad):
        self.model.stop_training = True
        if bad:
            where = (f"first non-finite variable: {bad[0]} (layer {bad[0].rsplit('/', 1)[0]}; {len(bad)} in all: "
                     f"{', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''})")
        else:
            where = "all variables are finite (check the inputs, the learning rate, or an overflow in the forward pass)"
        checkpoint = self.checkpoint() if callable(self.checkpoint) else self.checkpoint
        last = f"; last good checkpoint: {checkpoint}" if checkpoint else ""
        raise NonFiniteError(f"{what} at epoch {self._epoch + 1}, batch {batch + 1}: {where}{last}")

    def on_train_batch_end(self, batch, logs=None):
        bad = sorted(v.path for v in self._steps if not np.all(np.isfinite(ops.convert_to_numpy(v))))
        if bad:
            self._fail(batch, "an LSQ step size is NaN/Inf", bad)
        value = (logs or {}).get(self.monitor)
        if value is not None:
            value = float(ops.convert_to_numpy(value))
            if not np.isfinite(value):
                self._fail(batch, f"{self.monitor} is {value}", non_finite_variables(self.model))
