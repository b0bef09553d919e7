"""``fit_model``: compile and ``model.fit`` one training stage of a recipe, resumably.

Under ``tf.distribute.MultiWorkerMirroredStrategy`` ``fit_model`` trains with
:func:`distributed_fit` instead of ``model.fit``: Keras 3.15's ``fit`` fails there before the
first step (its symbolic build passes a tuple of ``PerReplica`` batches to
``strategy.reduce``: "Attempt to convert a value (PerReplica:...)"), and its per-step log
reduction calls ``strategy.reduce("MEAN", loss, axis=0)`` on scalars ("Invalid reduction
dimension 0"; ``train_on_batch`` and ``evaluate`` hit it too).
"""

import functools
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
      stage: "fp", "qat" or "merged8" (picks the LR, and the step-size LR for "qat"; with the
        recipe's ``freeze_bn_after`` a "qat" stage freezes the BN statistics of a RepQ model after
        that many epochs, :class:`repq.callbacks.FreezeNormStatistics`).
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
      write_checkpoints: False on non-chief multi-worker tasks (no checkpoints, no TensorBoard logs).
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
    freeze_after = recipe.get("freeze_bn_after") if stage == "qat" else None
    if freeze_after is not None:
        from repq.callbacks import FreezeNormStatistics, norm_folding_blocks  # repq.callbacks imports repq.training

        if norm_folding_blocks(model):  # merged LSQ and ECBSR have no norms to freeze
            callbacks.append(FreezeNormStatistics(freeze_after, verbose=int(verbose != 0)))
    monitor = ("val_accuracy" if recipe.task == "classification" else "val_psnr") if recipe.select_best else None
    initial_epoch, checkpoint = 0, None
    if output_dir:
        checkpoint = StageCheckpoint(os.path.join(output_dir, "backup", stage), monitor=monitor,
                                     write=write_checkpoints)
        initial_epoch = checkpoint.restore(model)
        if write_checkpoints:  # other workers would add event files to the chief's folder
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard", stage)))
        callbacks.append(checkpoint)
    elif monitor:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=epochs + 1,
                                                       restore_best_weights=True))
    callbacks.append(InterruptHandler(crash_after_steps))
    stream = train_ds.repeat()
    if initial_epoch:
        stream = stream.skip(initial_epoch * steps)
    fit = model.fit
    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        fit = functools.partial(distributed_fit, model)
    history = fit(stream, validation_data=test_ds, epochs=epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps, callbacks=callbacks, verbose=verbose)
    if checkpoint is not None:
        checkpoint.delete()
    return history


def _metric_results(model):
    """``{name: scalar tensor}`` of the model's metrics, like ``model.get_metrics_result`` but traceable.

    Read in cross-replica context, the metrics' ``on_read``/``sum`` variables are all-reduced:
    the values are those of the global batches (identical on every worker).
    """
    results = {}
    for metric in model.metrics:
        result = metric.result()
        results.update(result if isinstance(result, dict) else {metric.name: result})
    return results


def _python_logs(logs):
    """Scalar tensors -> Python floats (Keras' epoch logs)."""
    return {key: float(value) for key, value in logs.items()}


def _replicated_steps(model):
    """``(train_step, test_step, results)``: tf.functions running Keras' steps on every replica.

    ``train_step(batch)`` / ``test_step(batch)`` take one distributed global batch;
    ``train_step`` returns :func:`_metric_results` after the step, ``results()`` reads them.
    """
    strategy = model.distribute_strategy

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        strategy.run(model.train_step, args=(batch,))
        return _metric_results(model)

    @tf.function(reduce_retracing=True)
    def test_step(batch):
        strategy.run(model.test_step, args=(batch,))

    return train_step, test_step, tf.function(lambda: _metric_results(model))


def _validate(model, dataset, test_step, results, callbacks):
    """Evaluate on ``dataset`` (distributed); the epoch logs' ``val_<metric>`` entries."""
    model.reset_metrics()
    callbacks.on_test_begin()
    for batch in model.distribute_strategy.experimental_distribute_dataset(dataset):
        test_step(batch)
    logs = _python_logs(results())
    callbacks.on_test_end(logs)
    return {f"val_{key}": value for key, value in logs.items()}


def distributed_fit(model, dataset, *, epochs, steps_per_epoch, initial_epoch=0, validation_data=None,
                    callbacks=(), verbose="auto"):
    """``model.fit`` for ``MultiWorkerMirroredStrategy`` (where Keras 3.15's ``fit`` fails).

    The same training as ``fit``: every step runs ``model.train_step`` on each replica's slice
    of the global batch (``strategy.run``; Keras scales the loss by ``1 / num_replicas`` and the
    optimizer all-reduces the gradients), with the same callback calls (``on_train_begin/end``,
    ``on_epoch_begin/end``, ``on_train_batch_begin/end``, ``on_test_begin/end``) and
    ``model.stop_training``. Logs are the model's metrics read across all replicas, so every
    worker sees the same values (the global batches' loss, averaged over the epoch's steps) and
    takes the same decisions (NaNGuard, best epoch, early stop). Not XLA-compiled; one step
    per execution.

    Args:
      model: a compiled Keras model created under the strategy's scope.
      dataset: batched ``(x, y)`` dataset of GLOBAL batches, the same stream on every worker
        (the strategy splits each batch, e.g. by element: :func:`repq.distribute.shard_by_data`),
        at least ``(epochs - initial_epoch) * steps_per_epoch`` batches long.
      epochs, steps_per_epoch, initial_epoch, validation_data, callbacks, verbose: as in ``fit``.
    Returns:
      the ``keras.callbacks.History``; ``validation_data`` adds ``val_<metric>`` epoch logs.
    """
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=dataset.element_spec)  # optimizer and metric variables, as fit does
    train_step, test_step, results = _replicated_steps(model)
    train_function = model.train_function
    callbacks = keras.callbacks.CallbackList(list(callbacks), add_history=True, add_progbar=verbose != 0,
                                             verbose=verbose, epochs=epochs, steps=steps_per_epoch, model=model)
    batches = iter(model.distribute_strategy.experimental_distribute_dataset(dataset))
    model.stop_training, logs = False, {}
    callbacks.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        if model.train_function is not train_function:  # a callback asked for a retrace (make_train_function)
            train_step, test_step, results = _replicated_steps(model)
            train_function = model.train_function
        for step in range(steps_per_epoch):
            callbacks.on_train_batch_begin(step)
            callbacks.on_train_batch_end(step, train_step(next(batches)))
            if model.stop_training:
                break
        logs = _python_logs(results())
        if validation_data is not None:
            logs.update(_validate(model, validation_data, test_step, results, callbacks))
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)
    return model.history
