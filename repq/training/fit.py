"""``fit_model``: compile and ``model.fit`` one training stage of a recipe."""

import os

import keras
import tensorflow as tf

from repq.training.evaluation import training_metrics
from repq.training.losses import build_loss
from repq.training.recipe import build_optimizer, check_stage, stage_epochs


def count_batches(dataset):
    """Batches in a finite ``tf.data.Dataset`` (iterates once if the cardinality is unknown)."""
    n = int(tf.data.experimental.cardinality(dataset))
    if n == tf.data.INFINITE_CARDINALITY:
        raise ValueError("The training dataset is infinite; set `steps_per_epoch` in the recipe.")
    return n if n >= 0 else sum(1 for _ in dataset)


def fit_model(model, train_ds, test_ds, recipe, stage="fp", *, weight_bits=None, callbacks=(),
              output_dir=None, epochs=None, verbose="auto"):
    """Train ``model`` for one stage of ``recipe`` with ``model.compile`` + ``model.fit``.

    Args:
      model: a Keras model (float multi-branch, a QAT model, ...).
      train_ds, test_ds: batched ``(x, y)`` datasets; ``test_ds`` is the validation data.
      recipe: recipe ConfigDict (``configs/<model>.py``).
      stage: "fp", "qat" or "merged8" (picks the LR, and the step-size LR for "qat").
      weight_bits: weight bit width of a "qat" stage (8 -> Table S1's 8-bit step LR).
      callbacks: extra Keras callbacks.
      output_dir: if set, TensorBoard logs go to ``output_dir/tensorboard/<stage>`` and an
        interrupted run resumes from ``output_dir/backup/<stage>`` (``BackupAndRestore``).
      epochs: overrides the recipe's stage length.
    Returns:
      the ``keras.callbacks.History``. With ``recipe.select_best`` the model ends with the
      weights of its best validation epoch (Table S1 model selection), else the last.
    """
    check_stage(stage)
    epochs = stage_epochs(recipe, stage) if epochs is None else epochs
    steps = recipe.steps_per_epoch
    if steps:
        train_ds = train_ds.repeat()
    else:
        steps = count_batches(train_ds)
    model.compile(optimizer=build_optimizer(recipe, stage, steps, epochs, weight_bits),
                  loss=build_loss(recipe), metrics=training_metrics(recipe.task, recipe.data.scale))
    callbacks = list(callbacks)
    if recipe.select_best:
        monitor = "val_accuracy" if recipe.task == "classification" else "val_psnr"
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=epochs + 1,
                                                       restore_best_weights=True))
    if output_dir:
        callbacks += [keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard", stage)),
                      keras.callbacks.BackupAndRestore(os.path.join(output_dir, "backup", stage))]
    return model.fit(train_ds, validation_data=test_ds, epochs=epochs, steps_per_epoch=steps,
                     callbacks=callbacks, verbose=verbose)
