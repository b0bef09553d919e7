"""Per-unit checkpoints of a PTQ run: an interrupted ``quantize_ptq`` resumes after its last unit.

Layout under the checkpoint directory (every file written atomically, weights before the
``state.json`` that names them; superseded weights are deleted afterwards):

* ``calibrated.npz``: quantized-model weights after observer calibration (before any unit);
* ``<pass>/state.json``: ``{"units": [unit names], "done": k, "weights": "unit_<k>.npz",
  "results": [per-unit result dicts]}``;
* ``<pass>/unit_<k>.npz``: quantized-model weights after the first ``k`` units of the pass.

``<pass>`` is ``search`` (the QDrop pass that picks MRECG-loss merges) or ``units`` (the final
reconstruction; MRECG-loss writes none when its search selects no merge: the search pass is then
the final one, ``search_pass_kept`` in the report). The weights (``keras.Model.get_weights`` of the quantized model) hold every
piece of state a later unit reads: kernels, α, weight/activation qparams, quantizer states.
The random streams are seeded per unit (:func:`repq.ptq.reconstruct.reconstruct_unit`), so a
resumed run ends with exactly the weights of an uninterrupted one. A corrupt, partial or
foreign checkpoint raises :class:`repq.training.CheckpointError` naming the file.
"""

import json
import os

from repq.training.artifacts import CheckpointError, load_arrays, save_arrays, write_json
from repq.training.resume import InterruptHandler, SimulatedCrash

CALIBRATED = "calibrated.npz"
STATE = "state.json"


def _set_weights(model, path, hint):
    """Load the arrays of ``path`` into ``model``; a file of another model is a CheckpointError."""
    weights = load_arrays(path, hint)
    try:
        model.set_weights(weights)
    except ValueError as err:
        reason = str(err).strip().splitlines()[0][:200]
        raise CheckpointError(f"{path} holds weights of another model ({reason}); {hint}.") from err


class RunCheckpoint:
    """Checkpoints, signals and the crash test hook of one ``quantize_ptq`` run.

    Args:
      directory: checkpoint folder, or None (nothing written or restored, no signal handlers).
      crash_after_units: test hook, raise :class:`SimulatedCrash` once this many units have been
        reconstructed (and checkpointed) in this process.

    Use as a context manager: inside it SIGTERM/SIGINT set a flag that :meth:`check_signal`
    (called after every optimisation step) turns into ``TrainingInterrupted``; the unit in
    flight is redone on resume.
    """

    def __init__(self, directory=None, crash_after_units=None):
        if crash_after_units and not directory:
            raise ValueError("crash_after_units needs a checkpoint directory.")
        self.directory, self.crash_after_units = directory, crash_after_units
        self.signals = InterruptHandler()
        self.units_done, self.units_restored = 0, 0

    @property
    def hint(self):
        return f"delete {self.directory} to restart the reconstruction"

    def __enter__(self):
        if self.directory:
            self.signals.on_train_begin()
        return self

    def __exit__(self, *exc):
        self.signals.on_train_end()

    def check_signal(self):
        self.signals.check_signal()

    def calibrate(self, qmodel, batches, verbose=0):
        """Run the observers of ``qmodel`` (a QuantModel) on ``batches``, or load their saved result
        (``verbose``: QuantModel.calibrate's progress bar)."""
        if not self.directory:
            qmodel.calibrate(batches, verbose)
            return
        path = os.path.join(self.directory, CALIBRATED)
        if os.path.exists(path):
            _set_weights(qmodel.model, path, self.hint)
            if verbose:
                print(f"observer calibration loaded from {path}", flush=True)
        else:
            qmodel.calibrate(batches, verbose)
            save_arrays(path, qmodel.model.get_weights())
        self.check_signal()

    def stage(self, name):
        """The :class:`PassCheckpoint` of pass ``name`` ("search" / "units"), None without a directory."""
        return PassCheckpoint(os.path.join(self.directory, name), self) if self.directory else None

    def unit_finished(self):
        """Count a reconstructed (and saved) unit; the crash hook fires here."""
        self.units_done += 1
        self.check_signal()
        if self.crash_after_units and self.units_done >= self.crash_after_units:
            raise SimulatedCrash(f"simulated crash after {self.units_done} reconstruction units "
                                 "(--crash_after_units)")


class PassCheckpoint:
    """State of one reconstruction pass under ``directory`` (see the module docstring)."""

    def __init__(self, directory, run):
        self.directory, self.run = directory, run

    @property
    def state_path(self):
        return os.path.join(self.directory, STATE)

    def check_signal(self):
        self.run.check_signal()

    def _read_state(self, unit_names):
        try:
            with open(self.state_path) as f:
                state = json.load(f)
            done, weights, results = int(state["done"]), str(state["weights"]), list(state["results"])
            units = list(state["units"])
        except (ValueError, KeyError, TypeError, OSError) as err:
            raise CheckpointError(f"{self.state_path} is corrupt ({type(err).__name__}: {err}); "
                                  f"{self.run.hint}.") from err
        if units != list(unit_names):
            raise CheckpointError(f"{self.state_path} was written for other reconstruction units "
                                  f"({len(units)} units from {units[:1]}, now {len(unit_names)} from "
                                  f"{list(unit_names)[:1]}); {self.run.hint}.")
        if len(results) != done or not 0 < done <= len(units):
            raise CheckpointError(f"{self.state_path} is inconsistent (done={done}, {len(results)} results); "
                                  f"{self.run.hint}.")
        return weights, results

    def restore(self, model, unit_names):
        """Load the last checkpoint of this pass into ``model``; -> results of its finished units ([]: none)."""
        if not os.path.exists(self.state_path):
            return []
        weights, results = self._read_state(unit_names)
        _set_weights(model, os.path.join(self.directory, weights), self.run.hint)
        self.run.units_restored += len(results)
        return results

    def save(self, model, unit_names, results):
        """Checkpoint ``model`` after ``len(results)`` finished units of this pass."""
        name = f"unit_{len(results):04d}.npz"
        save_arrays(os.path.join(self.directory, name), model.get_weights())
        write_json(self.state_path, dict(units=list(unit_names), done=len(results), weights=name,
                                         results=results))
        for old in os.listdir(self.directory):  # superseded once state.json names the new file
            if old.startswith("unit_") and old != name:
                os.remove(os.path.join(self.directory, old))
        self.run.unit_finished()
