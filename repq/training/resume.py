"""Resumable training stages: atomic per-epoch checkpoints, best-epoch tracking, signals.

:class:`StageCheckpoint` replaces ``keras.callbacks.BackupAndRestore`` in
:func:`repq.training.fit_model`. After every epoch it writes, atomically,
``<dir>/epoch_<E>.weights.h5`` (model and optimizer state) and then ``<dir>/state.json``
(the epoch, the file, the best validation value so far); the best epoch's model weights go
to ``<dir>/best.npz``. :meth:`StageCheckpoint.restore` (called after ``compile``, before
``fit``) loads the state and returns the epoch to start from, so the resumed stage ends with
the same weights as an uninterrupted one: ``fit_model`` feeds ONE seeded data stream and
skips the batches of the finished epochs, and the best-epoch selection continues where it
stopped. A corrupt or partial checkpoint raises :class:`CheckpointError` naming the file.

:class:`InterruptHandler` turns SIGTERM/SIGINT into :class:`TrainingInterrupted` at the end
of the current batch (the partial epoch is redone on resume; the last epoch checkpoint is
the resume point). ``crash_after_steps`` raises :class:`SimulatedCrash` after that many
batches (a test hook, ``train.py --crash_after_steps``).
"""

import json
import os
import shutil
import signal
import tempfile

import keras

from repq.training.artifacts import CheckpointError, load_arrays, save_arrays, save_weights, write_json

STATE = "state.json"
BEST = "best.npz"


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived; training stopped after the current batch (``signum``: the signal)."""

    def __init__(self, signum):
        self.signum = int(signum)
        super().__init__(f"received {signal.Signals(self.signum).name}")


class SimulatedCrash(RuntimeError):
    """Raised by the ``crash_after_steps`` test hook."""


class StageCheckpoint(keras.callbacks.Callback):
    """Per-epoch atomic checkpoints of one stage under ``directory``, with best-epoch selection.

    Args:
      directory: checkpoint folder (created on the first save).
      monitor: epoch-log metric of the best epoch (e.g. "val_accuracy"), or None to keep the
        last epoch. With a monitor, ``on_train_end`` loads the best epoch's model weights
        (like ``EarlyStopping(restore_best_weights=True)``, but surviving a restart).
      mode: "max" or "min".
      write: False on non-chief multi-worker tasks (they restore, and save only to a
        temporary file: :func:`_save_and_discard`).
    """

    def __init__(self, directory, monitor=None, mode="max", write=True):
        super().__init__()
        self.directory, self.monitor, self.mode, self.write = directory, monitor, mode, write
        self.best, self.best_epoch, self.epoch = None, None, 0

    @property
    def state_path(self):
        return os.path.join(self.directory, STATE)

    def read_state(self):
        """The saved state dict, or None if there is no checkpoint."""
        if not os.path.exists(self.state_path):
            return None
        try:
            with open(self.state_path) as f:
                state = json.load(f)
            int(state["epoch"]), str(state["weights"])
        except (ValueError, KeyError, TypeError, OSError) as err:
            raise CheckpointError(f"{self.state_path} is corrupt ({err}); delete {self.directory} "
                                  "to restart this stage.") from err
        return state

    def restore(self, model):
        """Load the last checkpoint into ``model`` (compiled); return the epoch to resume at (0: none)."""
        state = self.read_state()
        if state is None:
            return 0
        path = os.path.join(self.directory, state["weights"])
        hint = f"delete {self.directory} to restart this stage"
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} (named by {self.state_path}) is missing; {hint}.")
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(path)
        except Exception as err:  # noqa: BLE001 - h5py/Keras raise many types on a bad file
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path} is not a valid checkpoint ({type(err).__name__}: {reason}); {hint}.") from err
        self.epoch, self.best, self.best_epoch = int(state["epoch"]), state.get("best"), state.get("best_epoch")
        if self.monitor and self.best is not None and not os.path.isfile(os.path.join(self.directory, BEST)):
            raise CheckpointError(f"{os.path.join(self.directory, BEST)} is missing; {hint}.")
        return self.epoch

    def _improved(self, value):
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        self.epoch = epoch + 1
        if self.monitor:
            value = (logs or {}).get(self.monitor)
            if value is None:
                raise KeyError(f"StageCheckpoint: metric {self.monitor!r} is not in the epoch logs ({sorted(logs or {})}).")
            if self._improved(float(value)):
                self.best, self.best_epoch = float(value), self.epoch
                if self.write:
                    save_arrays(os.path.join(self.directory, BEST), self.model.get_weights())
        if not self.write:
            _save_and_discard(self.model)
            return
        name = f"epoch_{self.epoch:04d}.weights.h5"
        save_weights(self.model, os.path.join(self.directory, name))
        write_json(self.state_path, dict(epoch=self.epoch, weights=name, best=self.best, best_epoch=self.best_epoch,
                                         monitor=self.monitor))
        for old in os.listdir(self.directory):  # older epochs are superseded once state.json names the new one
            if old.startswith("epoch_") and old != name:
                os.remove(os.path.join(self.directory, old))

    def on_train_end(self, logs=None):
        path = os.path.join(self.directory, BEST)
        if self.monitor and self.best is not None and os.path.isfile(path):
            self.model.set_weights(load_arrays(path, f"delete {self.directory} to restart this stage"))

    def delete(self):
        """Remove the checkpoint folder (the stage is complete and its artefact saved)."""
        if self.write:
            shutil.rmtree(self.directory, ignore_errors=True)
            try:
                os.rmdir(os.path.dirname(self.directory))  # the backup/ folder, once no stage uses it
            except OSError:
                pass


def _save_and_discard(model):
    """Save ``model``'s weights to a temporary file and delete it: a non-chief worker's epoch save.

    Under ``MultiWorkerMirroredStrategy`` every worker must save when the chief does: Keras
    3.15's ``save_weights`` creates variables (a reference optimizer; its skip-set cache is
    never hit), and creating a variable in the strategy's scope is a collective broadcast (a
    save by the chief alone fails with "Collective instance N expected type 1 and data_type 9").
    """
    with tempfile.TemporaryDirectory() as tmp:
        model.save_weights(os.path.join(tmp, "discard.weights.h5"))


class InterruptHandler(keras.callbacks.Callback):
    """Stop cleanly on SIGTERM/SIGINT (and, as a test hook, crash after ``crash_after_steps`` batches).

    Installs the signal handlers on ``on_train_begin`` (main thread only) and restores the
    previous ones on ``on_train_end``. A signal sets a flag; at the end of the batch in
    flight the callback raises :class:`TrainingInterrupted`.
    """

    def __init__(self, crash_after_steps=None, signals=(signal.SIGTERM, signal.SIGINT)):
        super().__init__()
        self.crash_after_steps, self.signals = crash_after_steps, signals
        self.received, self._previous, self._steps = None, {}, 0

    def _handle(self, signum, frame):
        self.received = signum

    def on_train_begin(self, logs=None):
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def on_train_end(self, logs=None):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def check_signal(self):
        """Raise :class:`TrainingInterrupted` (previous handlers restored) if a signal arrived."""
        if self.received is not None:
            self.on_train_end()
            raise TrainingInterrupted(self.received)

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        self.check_signal()
        if self.crash_after_steps and self._steps >= self.crash_after_steps:
            self.on_train_end()
            raise SimulatedCrash(f"simulated crash after {self._steps} training steps (--crash_after_steps)")
