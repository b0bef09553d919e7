"""``fit_model``: compile and ``model.fit`` one training stage of a recipe, resumably."""

import os

import keras
import tensorflow as tf

from repq.training.evaluation import training_metrics
from repq.training.losses import build_loss
from repq.training.recipe import build_optimizer, check_stage, stage_epochs
from repq.training.resume import InterruptHandler, StageCheckpoint


def count_batches(dataset):
    """Batches in a finite ``tf.data.Dataset`` (iterates once if the cardinality is unknown)."""
    n = int(tf.data.experimental.cardinality(dataset))
    if n == tf.data.INFINITE_CARDINALITY:
        raise ValueError("The training dataset is infinite; set `steps_per_epoch` in the recipe.")
    return n if n >= 0 else sum(1 for _ in dataset)


def fit_model(model, train_ds, test_ds, recipe, stage="fp", *, weight_bits=None, callbacks=(),
              output_dir=None, epochs=None, verbose="auto", write_checkpoints=True, crash_after_steps=None):
    """Train ``model`` for one stage of ``recipe`` with ``model.compile`` + ``model.fit``.

    Args:
      model: a Keras model (float multi-branch, a QAT model, ...). Under a ``tf.distribute``
        strategy, create it (and call this) inside ``strategy.scope()``.
      train_ds, test_ds: batched ``(x, y)`` datasets; ``test_ds`` is the validation data.
        ``train_ds`` is consumed as ONE stream (``train_ds.repeat()``, a fresh shuffle per
        pass, deterministic under the pipeline's seed); pass a dataset no one has iterated.
      recipe: recipe ConfigDict (``configs/<model>.py``).
      stage: "fp", "qat" or "merged8" (picks the LR, and the step-size LR for "qat").
      weight_bits: weight bit width of a "qat" stage (8 -> Table S1's 8-bit step LR).
      callbacks: extra Keras callbacks.
      output_dir: if set, TensorBoard logs go to ``output_dir/tensorboard/<stage>`` and the
        stage checkpoints after every epoch to ``output_dir/backup/<stage>``
        (:class:`repq.training.resume.StageCheckpoint`): calling ``fit_model`` again with the
        same arguments resumes there (the finished epochs' batches are skipped in the data
        stream, the best-epoch bookkeeping continues) and ends with the same weights as an
        uninterrupted run. SIGTERM/SIGINT stop training after the current batch with
        :class:`repq.training.resume.TrainingInterrupted`. The folder is deleted when the
        stage completes.
      epochs: overrides the recipe's stage length.
      write_checkpoints: False on non-chief multi-worker tasks.
      crash_after_steps: test hook, raise ``SimulatedCrash`` after that many batches.
    Returns:
      the ``keras.callbacks.History``. With ``recipe.select_best`` the model ends with the
      weights of its best validation epoch (Table S1 model selection), else the last.
    """
    check_stage(stage)
    epochs = stage_epochs(recipe, stage) if epochs is None else epochs
    steps = recipe.steps_per_epoch or count_batches(train_ds)
    model.compile(optimizer=build_optimizer(recipe, stage, steps, epochs, weight_bits),
                  loss=build_loss(recipe), metrics=training_metrics(recipe.task, recipe.data.scale))
    callbacks = list(callbacks)
    monitor = ("val_accuracy" if recipe.task == "classification" else "val_psnr") if recipe.select_best else None
    initial_epoch, checkpoint = 0, None
    if output_dir:
        checkpoint = StageCheckpoint(os.path.join(output_dir, "backup", stage), monitor=monitor,
                                     write=write_checkpoints)
        initial_epoch = checkpoint.restore(model)
        callbacks += [keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard", stage)), checkpoint]
    elif monitor:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=epochs + 1,
                                                       restore_best_weights=True))
    callbacks.append(InterruptHandler(crash_after_steps))
    stream = train_ds.repeat()
    if initial_epoch:
        stream = stream.skip(initial_epoch * steps)
    history = model.fit(stream, validation_data=test_ds, epochs=epochs, initial_epoch=initial_epoch,
                        steps_per_epoch=steps, callbacks=callbacks, verbose=verbose)
    if checkpoint is not None:
        checkpoint.delete()
    return history
