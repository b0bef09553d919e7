"""Quiet start-up for the command-line tools (train.py, export.py, ptq.py, ``python -m repq.convert``).

Known-harmless noise is removed; everything else stays visible:

* ``import tensorflow`` (2.21) logs through absl's C++ logging before absl is initialised, so
  ``TF_CPP_MIN_LOG_LEVEL`` does not apply: "Could not find cuda drivers on your machine, GPU
  will not be used." (``cudart_stub.cc``) and the oneDNN notice (``port.cc``), each twice, with
  absl's "All log messages before absl::InitializeLog() ..." banner; the first device lookup then
  logs "failed call to cuInit" on a machine without a CUDA driver. No environment variable stops
  them (measured: ``TF_CPP_MIN_LOG_LEVEL=3``, ``CUDA_VISIBLE_DEVICES=-1`` or empty).
  :func:`import_tensorflow` imports TensorFlow and lists the physical devices (the logical
  devices stay configurable) with file descriptor 2 sent to a temporary file, then writes the
  text back without the absl lines below ``TF_CPP_MIN_LOG_LEVEL`` (INFO from level 1, WARNING
  from level 2), the banner and, only after "Could not find cuda drivers", the cuInit failure.
  ERROR and FATAL lines, Python warnings and anything else are written back unchanged; if the
  import fails, all of it is. ``repq/__init__.py`` calls it, so importing repq before
  TensorFlow makes the import quiet.
* Keras warnings the tools trigger by design (:data:`HARMLESS_WARNINGS`, exact messages) and
  TF's retracing warning for PTQ's per-unit functions (:data:`HARMLESS_TF_LOGS`): filtered by
  :func:`setup`, which every CLI calls first.
* LiteRT's "Created TensorFlow Lite XNNPACK delegate for CPU." notice, dropped with
  :func:`filtered_stderr` where ``repq.export.tflite_graph`` creates interpreters.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings

DEFAULT_LOG_LEVEL = "2"
# absl's C++ log line: severity letter, MMDD, time, thread id, file:line]
ABSL_LINE = re.compile(r"^([IWEF])\d{4} \S+\s+\d+ \S+:\d+\] ")
ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
SEVERITY_LEVEL = {"I": 0, "W": 1}  # dropped when TF_CPP_MIN_LOG_LEVEL > this; E and F are always kept
NO_DRIVER = "Could not find cuda drivers on your machine"
# the CUDA platform's own error for the same fact (no libcuda): dropped only when NO_DRIVER was logged
NO_DRIVER_CUINIT = "failed call to cuInit"
# LiteRT's notice on creating its default CPU runtime (once per process, on stderr)
XNNPACK_NOTICE = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."

# (message regex, category) of Keras warnings that are harmless in these tools; matched at the
# start of the message (warnings.filterwarnings semantics).
HARMLESS_WARNINGS = (
    # Keras' fit() passes shuffle=True to its data adapter by default; our tf.data pipelines
    # shuffle themselves (keras/src/trainers/data_adapters, reported from epoch_iterator.py).
    (r"`shuffle=True` was passed, but will be ignored since the data `x` was provided as a "
     r"tf\.data\.Dataset", UserWarning),
    # a functional model called with a tensor where its input structure is a one-element
    # list (models rebuilt by the QAT transform, reparametrize, export): Keras flattens it.
    (r"The structure of `inputs` doesn't match the expected structure", UserWarning),
)
# TensorFlow's Python log (logger "tensorflow"): PTQ builds one tf.function per reconstruction unit
# on purpose (QuantModel._submodel), which TF reports as retracing after five of them.
HARMLESS_TF_LOGS = (re.compile(r"\d+ out of the last \d+ calls to <function QuantModel\._submodel\.<locals>"
                               r"\.<lambda> at 0x[0-9a-f]+> triggered tf\.function retracing"),)


class _DropHarmless(logging.Filter):
    """Drops the records of :data:`HARMLESS_TF_LOGS`."""

    def filter(self, record):
        message = record.getMessage()
        return not any(pattern.match(message) for pattern in HARMLESS_TF_LOGS)


def min_log_level():
    """``TF_CPP_MIN_LOG_LEVEL`` as an int (0 when unset or not a number)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filter_import_log(text, level):
    """The lines of ``text`` (stderr captured during ``import tensorflow``) that stay visible at
    ``TF_CPP_MIN_LOG_LEVEL=level``: absl INFO/WARNING lines below the level and the banner go."""
    kept, no_driver = [], NO_DRIVER in text
    for line in text.splitlines(keepends=True):
        match = ABSL_LINE.match(line)
        if match and SEVERITY_LEVEL.get(match.group(1), 99) < level:
            continue
        if match and no_driver and level >= 1 and NO_DRIVER_CUINIT in line:
            continue
        if line.rstrip("\r\n") == ABSL_BANNER and level >= 1:
            continue
        kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def filtered_stderr(keep):
    """Inside the block, file descriptor 2 (C++ logs and Python's stderr alike) goes to a temporary
    file; at the end ``keep(text)`` of it is written to stderr, or all of it if the block raised.
    Without a usable fd 2 the block runs unfiltered."""
    for stream in (sys.stdout, sys.stderr):
        _flush(stream)
    try:
        capture = tempfile.TemporaryFile()
    except OSError:
        capture = None
    try:
        saved = os.dup(2) if capture else None
    except OSError:
        saved = None
    if saved is None:
        if capture:
            capture.close()
        yield
        return
    os.dup2(capture.fileno(), 2)
    failed = True
    try:
        yield
        failed = False
    finally:
        _flush(sys.stderr)
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")
        capture.close()
        text = text if failed else keep(text)
        if text:
            _write_fd2(text)


def import_tensorflow():
    """Import TensorFlow once, without the absl start-up lines hidden by ``TF_CPP_MIN_LOG_LEVEL``
    (module docstring) -> the ``tensorflow`` module. A no-op when it is imported already or the
    level is 0."""
    if "tensorflow" in sys.modules or min_log_level() < 1:
        import tensorflow
        return tensorflow
    with filtered_stderr(lambda text: filter_import_log(text, min_log_level())):
        import tensorflow
        # find the physical devices now (what TF does at its first op; the logical devices stay
        # configurable), so that the CUDA platform logs its start-up lines here
        tensorflow.config.list_physical_devices()
    return tensorflow


def without_lines(*lines):
    """``keep`` function for :func:`filtered_stderr` that drops these exact lines."""
    drop = set(lines)
    return lambda text: "".join(line for line in text.splitlines(keepends=True)
                                if line.rstrip("\r\n") not in drop)


def setup():
    """First call of every CLI: ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2, the known-harmless Keras
    warnings are filtered and TensorFlow is imported quietly (:func:`import_tensorflow`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LOG_LEVEL)
    for message, category in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _DropHarmless) for f in logger.filters):
        logger.addFilter(_DropHarmless())
    import_tensorflow()


def _flush(stream):
    try:
        stream.flush()
    except (AttributeError, OSError, ValueError):
        pass


def _write_fd2(text):
    data = text.encode("utf-8", "replace")
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass


def flag_error_line(err, prog):
    """One line for an absl flag-parsing error ``err`` (``flags.Error``) of CLI ``prog``.

    absl's own messages may span lines (ml_collections puts the config file's traceback in
    them); the line kept names the flag and the last line of that traceback (the cause).
    """
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"bad command line ({type(err).__name__}); {prog} --help lists the flags."
    first = lines[0]
    if len(lines) > 1 and "Traceback" in text:
        cause = lines[-1]
        first = first.rstrip(":")
        first = first.replace("Error whilst parsing config file", "").rstrip(": ")
        first = f"{first}: {cause}"
    match = re.match(r"Unknown command line flag '([^']+)'", first)
    if match:
        name = match.group(1)
        if name.startswith("config."):
            return (f"unknown flag --{name}: the recipe (--config) has no field {name[len('config.'):]!r}; "
                    "its fields are the keys of the --config file's get_config().")
        return f"unknown flag --{name}{first[match.end():].rstrip('.')}; {prog} --help lists the flags."
    return first


def exit_on_help(argv, doc, flag_values, module_name):
    """``--help``/``-h``/``--helpfull`` in ``argv``: print ``doc`` and the flags the tool's module
    defines, exit 0.

    absl's own ``--help`` prints ``__main__``'s docstring and the flags of the script in
    ``sys.argv[0]``: no flags at all when the tool runs as a console script (``repq-train``) or
    through the checkout's ``train.py``. ``module_name``: the tool module's ``__name__`` (absl
    registers the flags of a module run as ``__main__`` under ``sys.argv[0]``).
    """
    if {"--help", "-h", "--helpfull"} & set(argv[1:]):
        module = sys.argv[0] if module_name == "__main__" else module_name
        print(doc.strip() + "\n\nflags:\n" + flag_values.module_help(module))
        sys.exit(0)
