"""Atomic artefact writes and checked reads.

Writes go to a temporary file next to the target, then ``os.replace``: a crash, a full disk
or a signal never leaves a half-written artefact under the final name, and an earlier
version of the file stays intact until the new one is complete. Reads of ``.keras`` files
(:func:`load_model`) turn a truncated or garbage file into :class:`CheckpointError`, a
one-line message naming the file and what to do.
"""

import io
import json
import os
import zipfile

import numpy as np


class CheckpointError(Exception):
    """A checkpoint or artefact that is missing, truncated, corrupt or of another model."""


def _temporary(path, suffix=""):
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f".{name}.partial{suffix}")


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def atomic_write(path, write, suffix=""):
    """Call ``write(tmp_path)``, then ``os.replace(tmp_path, path)``; on any error remove the temporary file."""
    tmp = _temporary(path, suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def write_text(path, text):
    """Atomically write ``text`` to ``path``."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    atomic_write(path, write)


def write_json(path, data):
    """Atomically write ``data`` as indented JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_model(model, path):
    """Atomically save a Keras model to ``path`` (a ``.keras`` file)."""
    if not path.endswith(".keras"):
        raise ValueError(f"Invalid value for argument `path`. Expected a '.keras' file. Received path={path!r}.")
    def write(tmp):
        model.save(tmp)
        _sync(tmp)
    atomic_write(path, write, ".keras")


def _sync(path):
    """Flush ``path``'s data to disk (before it replaces an older file: never an empty file after a crash)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_weights(model, path):
    """Atomically save ``model.save_weights`` (weights and optimizer state) to ``path`` (``.weights.h5``)."""
    atomic_write(path, model.save_weights, ".weights.h5")


def save_arrays(path, arrays):
    """Atomically write a list of numpy arrays to ``path`` (``.npz``, keys ``arr_0``, ``arr_1``, ...)."""
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
    atomic_write(path, write)


def load_arrays(path, hint="delete it and rerun"):
    """The list of arrays saved by :func:`save_arrays`; a missing or corrupt file raises :class:`CheckpointError`."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing; {hint}.")
    try:
        with np.load(path) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]
    except Exception as err:  # noqa: BLE001 - zipfile/numpy raise many types on a bad file
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is corrupt ({type(err).__name__}: {reason}); {hint}.") from err


# a run directory's entries that are not results: its settings (and any hidden file: the repq.outputs
# marker, temporary files)
_NOT_RESULTS = ("run_config.json",)


def run_results(output_dir):
    """The entries of ``output_dir`` that a run produced (sorted): everything but run_config.json,
    the repq.outputs marker and hidden temporary files."""
    try:
        names = os.listdir(output_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n not in _NOT_RESULTS and not n.startswith("."))


def check_run_config(output_dir, config, write=True):
    """Settings guard of a resumable run directory (``<output_dir>/run_config.json``).

    If the file records other settings than ``config`` (a JSON-able dict) and the directory
    holds results of that run (:func:`run_results`: checkpoints, models, logs), raise
    :class:`CheckpointError` naming the differing keys and those results. If it holds none
    (the earlier run failed before producing anything, e.g. on a wrong flag), the new settings
    replace the old ones and a one-line note saying so is returned (else None). An absent file
    is written (atomically) when ``write``. A corrupt file is a :class:`CheckpointError` too.
    """
    config = json.loads(json.dumps(config, default=str, sort_keys=True))
    path = os.path.join(output_dir, "run_config.json")
    note = None
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{path} is corrupt ({err}); delete it (or the run directory) and rerun.") from err
        if saved == config:
            return None
        keys = ", ".join(sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k)))
        results = run_results(output_dir)
        if results:
            shown = ", ".join(results[:4]) + (", ..." if len(results) > 4 else "")
            raise CheckpointError(f"{output_dir} holds a run with other settings (differs in: {keys}) and its "
                                  f"results ({shown}); use another --output_dir, or delete that one.")
        note = (f"{output_dir}: the earlier run there (other settings, differs in: {keys}) left no results: "
                "its run_config.json is replaced, starting afresh with these settings.")
    if write:
        write_json(path, config)
    return note


def check_keras_file(path, hint="delete it and rerun"):
    """Raise :class:`CheckpointError` unless ``path`` is a complete ``.keras`` archive."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} does not exist; {hint}.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes, not a .keras archive); {hint}.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f"{path} is not a valid .keras file (truncated, corrupt or another format: "
                              f"{err}); {hint}.") from err
    if bad is not None or not {"config.json", "model.weights.h5"} <= names:
        what = f"damaged member {bad}" if bad else "missing config.json/model.weights.h5"
        raise CheckpointError(f"{path} is not a valid .keras file ({what}); {hint}.")


def load_model(path, hint="delete it and rerun", compile=False):
    """``keras.saving.load_model`` that reports a bad file as a one-line :class:`CheckpointError`."""
    import keras

    check_keras_file(path, hint)
    try:
        return keras.saving.load_model(path, compile=compile)
    except Exception as err:  # noqa: BLE001 - anything Keras raises on a bad archive
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} could not be loaded ({type(err).__name__}: {reason}); {hint}.") from err


def os_error_line(err):
    """A full disk, missing permission, ... (``OSError``) as one CLI line; outputs are written
    atomically, so everything written before is intact and rerunning resumes."""
    return (f"{err.strerror or err}: {err.filename or ''} ({type(err).__name__}); files written before are "
            "intact. Free space / fix permissions and rerun the same command to resume.")
