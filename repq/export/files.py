"""Writing an export without leaving half-written output behind, and loading checkpoints."""

import contextlib
import os
import shutil
import tempfile

import keras

from repq.export.errors import ExportError
from repq.outputs import check_export_dir, ordinary_mode, write_marker

RUN_DIR_FILES = ("qat_model.keras", "ptq_model.keras", "deploy_model.keras")  # train.py, ptq.py


@contextlib.contextmanager
def atomic_directory(path, tool="export"):
    """Yield a temp dir next to ``path``; on success it replaces ``path``, on error it is removed.

    ``path`` may be new, an empty directory or an earlier export (``repq.outputs`` rules,
    checked before and again right before the swap): anything else raises
    ``repq.outputs.OutputError`` and is left as it is. The new directory gets ``tool``'s marker
    and an ordinary mode (``0777 & ~umask``). An existing ``path`` is first renamed aside and
    deleted only once the new one is in place, so a crash at any point leaves either the old or
    the new export at ``path`` (or, between the two renames, the old one in ``.<name>.old-*``
    next to it).
    """
    path = os.path.abspath(path)
    check_export_dir(path, overwrite=True)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
        write_marker(tmp, tool)
        ordinary_mode(tmp)
        check_export_dir(path, overwrite=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.lexists(path):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
        os.replace(path, os.path.join(old, "previous"))
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path):
    """A ``.keras`` file, or a train.py / ptq.py run dir (the first of ``RUN_DIR_FILES`` it holds).

    Raises:
      ExportError: missing path/file, or a file Keras cannot read.
    """
    from repq import models  # noqa: F401  (registers the zoo's custom layers)
    import repq.qat  # noqa: F401
    if os.path.isdir(path):
        names = [n for n in RUN_DIR_FILES if os.path.isfile(os.path.join(path, n))]
        if not names:
            raise ExportError(f"run directory {path!r} has none of {', '.join(RUN_DIR_FILES)}; "
                              "run train.py or ptq.py first.")
        path = os.path.join(path, names[0])
    if not os.path.isfile(path):
        raise ExportError(f"checkpoint {path!r} does not exist.")
    from repq.training.artifacts import CheckpointError, check_keras_file

    try:
        check_keras_file(path, "pass a .keras file saved by train.py (or its run directory)")
    except CheckpointError as err:  # empty, truncated or not a zip: say so (Keras says "File not found")
        raise ExportError(str(err)) from err
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001  (Keras raises many types for a bad file)
        raise ExportError(f"cannot load checkpoint {path!r}: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}") from err
