"""Where a repq tool may write: the output rules of train.py, ptq.py, export.py and repq.convert.

A tool never destroys what it did not create. A directory made by a repq tool carries a
marker file, :data:`MARKER` (``.repq-output.json``, ``{"tool": "export" | "train" | "ptq", ...}``),
and only such a directory is ever replaced or resumed:

* **export** (``export.py --output``, ``repq.export_savedmodel``; the directory is *replaced*):
  a new path or an empty directory; an earlier export (marker ``tool=export``) only with
  ``overwrite``. Refused: a file, a special file, a symbolic link, a non-empty folder without
  the export marker, the checkpoint itself and any folder that contains it.
* **run directories** (``train.py`` / ``ptq.py --output_dir``; written *into* and resumed):
  a new path, an empty directory, or a run directory of the same tool (its marker, or its
  ``run_config.json`` from before markers existed). Refused: a file, a special file, any other
  non-empty folder.
* **files** (``python -m repq.convert --output F.keras``; the file is *replaced*): a new path;
  an existing regular file only with ``overwrite``. Refused: a directory, a special file, a
  symbolic link.

A refusal raises :class:`OutputError`, one line saying why and what to do, before anything
is written. :func:`atomic_file` writes a file by these rules (temporary file next to it, then
``os.replace``); :func:`ordinary_mode` gives what ``tempfile`` made (0600 / 0700) the mode of
any other new file (``0666 & ~umask``, ``0777 & ~umask``).
"""

import datetime
import json
import os
import stat
import tempfile

MARKER = ".repq-output.json"
PROGRAMS = {"export": "export.py", "train": "train.py", "ptq": "ptq.py", "convert": "repq.convert"}
# a run directory made before markers existed: its run_config.json has this key
LEGACY_RUN_CONFIG_KEY = {"train": "recipe", "ptq": "calib_size"}
_SPECIAL = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


class OutputError(ValueError):
    """An output path a tool must not write to; the message says why and what to do."""


def _label(path, flag):
    return f"{flag} {path!r}" if flag else repr(path)


def _stat(path, follow):
    """``os.stat``/``os.lstat`` of ``path``, or None where nothing is (also below a file)."""
    try:
        return os.stat(path) if follow else os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def special_kind(mode):
    """'a FIFO (named pipe)', 'a character device', ... for a special file's ``st_mode``; else None."""
    return next((name for test, name in _SPECIAL if test(mode)), None)


def read_marker(directory):
    """The ``tool`` of ``directory``'s marker, or None (no marker, or an unreadable one)."""
    try:
        with open(os.path.join(directory, MARKER)) as f:
            tool = json.load(f).get("tool")
    except (OSError, ValueError, AttributeError):
        return None
    return tool if isinstance(tool, str) else None


def write_marker(directory, tool):
    """Write ``directory``'s marker (atomically): made by repq's ``tool``."""
    data = {"tool": tool, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "note": f"made by {PROGRAMS.get(tool, tool)} (repq); repq tools replace or resume this folder "
                    "only because of this file."}
    path = os.path.join(directory, MARKER)
    tmp = f"{path}.partial"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _legacy_run_tool(directory):
    """The tool whose run_config.json ``directory`` holds (a run dir from before markers), or None."""
    try:
        with open(os.path.join(directory, "run_config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return next((tool for tool, key in LEGACY_RUN_CONFIG_KEY.items() if isinstance(config, dict) and key in config),
                None)


def _contains(directory, path):
    """Whether ``path`` is ``directory`` or lies below it (real paths: symbolic links resolved)."""
    directory, path = os.path.realpath(directory), os.path.realpath(path)
    return os.path.commonpath([directory, path]) == directory


def _refuse_link_or_special(path, label, what_to_do):
    """Raise OutputError if ``path`` is a symbolic link or a special file."""
    st = _stat(path, follow=False)
    if stat.S_ISLNK(st.st_mode):
        target = _stat(path, follow=True)
        kind = special_kind(target.st_mode) if target else None
        if kind:
            raise OutputError(f"{label} is a symbolic link to {kind}; {what_to_do}.")
        raise OutputError(f"{label} is a symbolic link (to {os.readlink(path)!r}); {what_to_do}, "
                          "or the path it points to.")
    kind = special_kind(st.st_mode)
    if kind:
        raise OutputError(f"{label} is {kind}; {what_to_do}.")


def check_export_dir(path, overwrite=False, checkpoint=None, flag=None):
    """Raise :class:`OutputError` unless an export may be written to directory ``path``.

    Allowed: a new path, an empty directory, or an earlier export (its marker says
    ``tool=export``) when ``overwrite``. ``checkpoint``: the model being exported (a file or a
    run directory), which ``path`` must neither be nor contain. ``flag``: the option's name for
    the message (e.g. "--output").
    """
    label = _label(path, flag)
    new = "pass a new or empty directory"
    if _stat(path, follow=False) is None:
        return
    if checkpoint is not None and _contains(path, checkpoint):
        if os.path.realpath(path) != os.path.realpath(checkpoint):
            where = f"contains the checkpoint {checkpoint!r}"
        else:
            where = "is the checkpoint's run directory" if os.path.isdir(path) else "is the checkpoint itself"
        inside = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "export")
        raise OutputError(f"{label} {where}; exporting there would replace it: pass another directory, "
                          f"e.g. {inside!r}.")
    _refuse_link_or_special(path, label, new)
    if not os.path.isdir(path):
        raise OutputError(f"{label} is a file, not an export directory; {new} (the file is left as it is).")
    if not os.listdir(path):
        return
    tool = read_marker(path) or _legacy_run_tool(path)
    if tool == "export":
        if not overwrite:
            raise OutputError(f"{label} holds an earlier export; pass --overwrite to replace it, or another "
                              "directory.")
        return
    if tool in PROGRAMS:
        raise OutputError(f"{label} is an output of {PROGRAMS[tool]}, not an export; {new}.")
    raise OutputError(f"{label} is a non-empty folder that no repq export made (no {MARKER}); {new}.")


def check_run_dir(path, tool, flag="--output_dir"):
    """Raise :class:`OutputError` unless ``path`` may be ``tool``'s (resumable) run directory.

    Allowed: a new path, an empty directory, a directory carrying ``tool``'s marker, or one
    holding ``tool``'s ``run_config.json`` (made before markers existed). A symbolic link to a
    directory counts as that directory.
    """
    label, program = _label(path, flag), PROGRAMS[tool]
    what_to_do = f"pass a new or empty directory, or a {program} run directory to resume"
    st = _stat(path, follow=True)
    if st is None:
        return
    kind = special_kind(st.st_mode)
    if kind:
        raise OutputError(f"{label} is {kind}; {what_to_do}.")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{label} is a file, not a run directory; {what_to_do} (the file is left as it is).")
    if not os.listdir(path):
        return
    owner = read_marker(path) or _legacy_run_tool(path)
    if owner == tool:
        return
    if owner in PROGRAMS:
        raise OutputError(f"{label} is an output of {PROGRAMS[owner]}, not a {program} run directory; {what_to_do}.")
    raise OutputError(f"{label} is a non-empty folder that {program} did not make (no {MARKER} or run_config.json); "
                      f"{what_to_do}.")


def prepare_run_dir(path, tool, flag="--output_dir"):
    """:func:`check_run_dir`, then create ``path`` and give it ``tool``'s marker (if it has none)."""
    check_run_dir(path, tool, flag)
    os.makedirs(path, exist_ok=True)
    if read_marker(path) != tool:
        write_marker(path, tool)


def check_output_file(path, overwrite=False, flag="--output"):
    """Raise :class:`OutputError` unless a file may be written to ``path`` (replacing a regular
    file only when ``overwrite``)."""
    label = _label(path, flag)
    if _stat(path, follow=False) is None:
        return
    _refuse_link_or_special(path, label, "pass a new file path")
    if os.path.isdir(path):
        raise OutputError(f"{label} is a directory; pass a file path (e.g. {os.path.join(path, 'model.keras')!r}).")
    if not overwrite:
        raise OutputError(f"{label} exists; pass --overwrite to replace it, or another path.")


def current_umask():
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_mode(path):
    """Give ``path`` (made by ``tempfile``: 0600 / 0700) a new file's mode: ``0666 & ~umask``,
    ``0777 & ~umask`` for a directory. Returns ``path``."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~current_umask())
    return path


def atomic_file(path, write, suffix="", overwrite=True, flag=None):
    """Write the file ``path`` atomically, by the rules of :func:`check_output_file`.

    ``write(tmp)`` fills a temporary file next to ``path`` (named ``.<name>.tmp-*<suffix>``),
    which then gets an ordinary mode and replaces ``path`` (checked again right before). On any
    error the temporary file is removed and ``path`` is left as it was. Returns ``path``.
    """
    check_output_file(path, overwrite, flag)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        ordinary_mode(tmp)
        check_output_file(path, overwrite, flag)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    return path
