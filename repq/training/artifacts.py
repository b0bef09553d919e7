"""Atomic artefact writes: write a temporary file next to the target, then ``os.replace``."""

import json
import os


def _temporary(path, suffix=""):
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f".{name}.partial{suffix}")


def write_text(path, text):
    """Atomically write ``text`` to ``path``."""
    tmp = _temporary(path)
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path, data):
    """Atomically write ``data`` as indented JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_model(model, path):
    """Atomically save a Keras model to ``path`` (a ``.keras`` file)."""
    if not path.endswith(".keras"):
        raise ValueError(f"Invalid value for argument `path`. Expected a '.keras' file. Received path={path!r}.")
    tmp = _temporary(path, ".keras")
    model.save(tmp)
    os.replace(tmp, path)
