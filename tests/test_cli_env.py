"""Quiet CLI start-up (repq.cli_env, issue 17 item 5): TensorFlow's absl start-up lines and the
known-harmless Keras warnings go, real errors stay."""

import logging
import os
import subprocess
import sys
import warnings

import pytest

from repq import cli_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMPORT_LOG = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796415153.150229   16175 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders.
I0000 00:00:1796415153.150534   16175 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
W0000 00:00:1796415153.150600   16175 something.cc:12] a warning
E0000 00:00:1796415157.206230   16175 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
E0000 00:00:1796415157.206231   16175 other.cc:7] a real error
F0000 00:00:1796415157.206232   16175 other.cc:8] a fatal error
Traceback (most recent call last): a Python line
"""


def _lines(text):
    return [line.split("] ")[-1] for line in text.splitlines()]


def test_import_log_filter_follows_tf_cpp_min_log_level():
    assert cli_env.filter_import_log(IMPORT_LOG, 0) == IMPORT_LOG
    level1 = _lines(cli_env.filter_import_log(IMPORT_LOG, 1))
    assert level1 == ["a warning", "a real error", "a fatal error", "Traceback (most recent call last): a Python line"]
    for level in (2, 3):  # ERROR and FATAL lines always stay visible
        assert _lines(cli_env.filter_import_log(IMPORT_LOG, level)) == level1[1:]


def test_cuinit_failure_stays_visible_when_a_driver_was_found():
    text = IMPORT_LOG.replace("Could not find cuda drivers on your machine", "Found the cuda drivers")
    assert "failed call to cuInit" in cli_env.filter_import_log(text, 2)


def test_filtered_stderr_keeps_everything_when_the_block_fails(capfd):
    with cli_env.filtered_stderr(cli_env.without_lines("drop me")):
        os.write(2, b"drop me\nkeep me\n")
    assert capfd.readouterr().err == "keep me\n"
    with pytest.raises(RuntimeError):
        with cli_env.filtered_stderr(cli_env.without_lines("drop me")):
            os.write(2, b"drop me\n")
            raise RuntimeError("boom")
    assert capfd.readouterr().err == "drop me\n"


def test_setup_filters_only_the_known_messages():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli_env.setup()
        warnings.warn("`shuffle=True` was passed, but will be ignored since the data `x` was provided as a "
                      "tf.data.Dataset. The Dataset is expected to already be shuffled (via `.shuffle(buffer_size)`).",
                      UserWarning)
        warnings.warn("The structure of `inputs` doesn't match the expected structure.\nExpected: ['keras_tensor']\n"
                      "Received: inputs=Tensor(shape=(8, 32, 32, 3))", UserWarning)
        warnings.warn("`shuffle` is something else", UserWarning)
    assert [str(w.message) for w in caught] == ["`shuffle` is something else"]
    logger = logging.getLogger("tensorflow")
    retracing = logger.makeRecord("tensorflow", logging.WARNING, __file__, 1, (
        "5 out of the last 8 calls to <function QuantModel._submodel.<locals>.<lambda> at 0x7f6c04523740> "
        "triggered tf.function retracing. Tracing is expensive ..."), None, None)
    other = logger.makeRecord("tensorflow", logging.WARNING, __file__, 1, (
        "5 out of the last 8 calls to <function train_step at 0x7f6c04523740> triggered tf.function retracing."),
        None, None)
    assert not logger.filter(retracing) and logger.filter(other)


def test_ptq_usage_error_is_the_only_stderr_line():
    """A real process: TF is imported (setup) before the check; stderr holds just the one error line."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "ptq.py"), "--iters=0", "--output_dir=/nonexistent/x"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["ptq.py: error: --iters=0 must be >= 1."], result.stderr[-2000:]


def test_tflite_example_classifies_digits_of_every_class():
    """examples/tflite_inference.py end to end: a tiny exported model, raw digits, LiteRT (~20 s)."""
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the example sets its own default
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "tflite_inference.py"), "--images", "10",
                             "--steps", "30"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy: " in result.stdout and "covering 10 of 10 classes" in result.stdout, result.stdout
    assert "input: int8, scale " in result.stdout
    for noise in ("Could not find cuda drivers", "absl::InitializeLog", "failed call to cuInit", "XNNPACK delegate"):
        assert noise not in result.stderr, result.stderr[-3000:]
