"""Outputs never destroy what they did not create (repq.outputs), and have ordinary file modes.

Each refusal is checked on the CLI (one line on stderr, exit 2) and by the state of the
victim afterwards: every file's bytes and every folder's listing under tmp_path are unchanged
(no temporary folder left either). Special files are FIFOs made in tmp_path (never /dev).
"""

import json
import os
import re
import stat
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags

from repq.cli import export
from repq.cli import ptq
from repq.cli import train
from repq import outputs
from repq.outputs import MARKER, OutputError, atomic_file, write_marker
from repq.training import SimulatedCrash
from tests.test_hostile_inputs import run_train
from tests.test_ptq_resume import run_ptq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def snapshot(root):
    """{relative path: bytes | 'dir: [listing]' | 'fifo' | 'link -> target'} of everything under ``root``
    (FIFOs are never opened)."""
    state = {}
    for directory, dirs, files in os.walk(root):
        rel = os.path.relpath(directory, root)
        state[rel] = f"dir: {sorted(os.listdir(directory))}"
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                state[os.path.join(rel, name)] = f"link -> {os.readlink(path)}"
            elif stat.S_ISFIFO(mode):
                state[os.path.join(rel, name)] = "fifo"
            else:
                with open(path, "rb") as f:
                    state[os.path.join(rel, name)] = f.read()
    return state


def one_error_line(err, prog):
    lines = [line for line in err.strip().splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


@pytest.fixture
def victims(tmp_path):
    """A regular file, a foreign non-empty folder, a FIFO, a link to it, a train.py run directory
    (with a model: the checkpoint), an earlier export and an empty folder."""
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    os.mkfifo(tmp_path / "pipe")
    os.symlink(tmp_path / "pipe", tmp_path / "pipe_link")
    run = tmp_path / "run"
    run.mkdir()
    write_marker(str(run), "train")
    (run / "run_config.json").write_text('{"recipe": {}}\n')
    (run / "qat_model.keras").write_bytes(b"the trained model")
    (tmp_path / "old_export").mkdir()
    write_marker(str(tmp_path / "old_export"), "export")
    (tmp_path / "old_export" / "model_int8.tflite").write_bytes(b"previous export")
    (tmp_path / "empty").mkdir()
    return tmp_path


# ---------------------------------------------------------------------------- export.py --output

@pytest.mark.parametrize("output, checkpoint, reason", [
    ("notes.txt", "run", "is a file, not an export directory"),
    ("photos", "run", "is a non-empty folder that no repq export made"),
    ("pipe", "run", "is a FIFO (named pipe)"),
    ("pipe_link", "run", "is a symbolic link to a FIFO (named pipe)"),
    ("run", "run", "is the checkpoint's run directory; exporting there would replace it"),
    ("run", "run/qat_model.keras", "contains the checkpoint"),
    (".", "run", "contains the checkpoint"),
    ("run/qat_model.keras", "run/qat_model.keras", "is the checkpoint itself"),
    ("old_export", "run", "holds an earlier export; pass --overwrite to replace it"),
])
def test_export_refuses_what_it_did_not_create(capsys, victims, output, checkpoint, reason):
    before = snapshot(victims)
    code = export.main(["--checkpoint", str(victims / checkpoint), "--output", str(victims / output)])
    line = one_error_line(capsys.readouterr().err, "export.py")
    assert code == 2 and reason in line, line
    assert snapshot(victims) == before


def test_export_refuses_another_tools_run_dir_even_with_overwrite(capsys, victims, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("elsewhere") / "qat.keras"
    checkpoint.write_bytes(b"model")
    before = snapshot(victims)
    code = export.main(["--checkpoint", str(checkpoint), "--output", str(victims / "run"), "--overwrite"])
    line = one_error_line(capsys.readouterr().err, "export.py")
    assert code == 2 and "is an output of train.py, not an export" in line
    assert snapshot(victims) == before


@pytest.mark.parametrize("output, extra", [("old_export", ["--overwrite"]), ("empty", []), ("new_out", [])])
def test_export_accepts_new_empty_or_earlier_export_with_overwrite(capsys, victims, output, extra):
    """Past the output rules the (missing) checkpoint is the error: the output is still intact."""
    before = snapshot(victims)
    code = export.main(["--checkpoint", str(victims / "missing.keras"), "--output", str(victims / output), *extra])
    line = one_error_line(capsys.readouterr().err, "export.py")
    assert code == 1 and "does not exist" in line, line
    assert snapshot(victims) == before


def test_atomic_directory_refuses_a_foreign_folder_and_marks_what_it_writes(tmp_path):
    from repq.export.files import atomic_directory
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"a cat")
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="non-empty folder that no repq export made"):
        with atomic_directory(str(tmp_path / "photos")):
            pytest.fail("must not be reached")
    assert snapshot(tmp_path) == before
    with atomic_directory(str(tmp_path / "out")) as tmp:
        open(os.path.join(tmp, "new.txt"), "w").close()
    assert outputs.read_marker(str(tmp_path / "out")) == "export"
    with atomic_directory(str(tmp_path / "out")) as tmp:  # the API replaces its own export
        open(os.path.join(tmp, "newer.txt"), "w").close()
    assert sorted(os.listdir(tmp_path / "out")) == [MARKER, "newer.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out", "photos"]


def test_export_api_does_not_write_into_a_fifo_or_a_folder(tmp_path):
    from repq.export.api import _write_bytes
    os.mkfifo(tmp_path / "m.tflite")
    (tmp_path / "dir.tflite").mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="is a FIFO"):
        _write_bytes(str(tmp_path / "m.tflite"), b"model")
    with pytest.raises(OutputError, match="is a directory"):
        _write_bytes(str(tmp_path / "dir.tflite"), b"model")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------- train.py / ptq.py --output_dir

# run_train / run_ptq: the in-process CLI drivers of tests/test_hostile_inputs.py and tests/test_ptq_resume.py


def _stop(*args, **kwargs):
    raise SimulatedCrash("stopped by the test where the work would start")


@pytest.fixture
def ptq_run_dir(victims):
    """victims/ptq_run: a ptq.py run directory from before markers (run_config.json only)."""
    (victims / "ptq_run").mkdir()
    (victims / "ptq_run" / "run_config.json").write_text('{"calib_size": 16}\n')
    return victims / "ptq_run"


@pytest.mark.parametrize("output_dir, reason", [
    ("notes.txt", "is a file, not a run directory"),
    ("pipe", "is a FIFO (named pipe)"),
    ("pipe_link", "is a FIFO (named pipe)"),
    ("photos", "is a non-empty folder that train.py did not make"),
    ("old_export", "is an output of export.py, not a train.py run directory"),
    ("ptq_run", "is an output of ptq.py, not a train.py run directory"),
])
def test_train_refuses_an_output_dir_it_did_not_create(capsys, victims, ptq_run_dir, output_dir, reason):
    before = snapshot(victims)
    code, err = run_train(capsys, "--model=ecbsr_m4c16", "--limit=2", f"--output_dir={victims / output_dir}")
    line = one_error_line(err, "train.py")
    assert code == 2 and reason in line, line
    assert snapshot(victims) == before


@pytest.mark.parametrize("output_dir, reason", [
    ("notes.txt", "is a file, not a run directory"),
    ("pipe", "is a FIFO (named pipe)"),
    ("photos", "is a non-empty folder that ptq.py did not make"),
    ("run", "is an output of train.py, not a ptq.py run directory"),
])
def test_ptq_refuses_an_output_dir_it_did_not_create(capsys, victims, output_dir, reason):
    before = snapshot(victims)
    code, err = run_ptq(capsys, "--model=resnet18", "--iters=4", "--calib_size=16", "--batch_size=8",
                        f"--output_dir={victims / output_dir}")
    line = one_error_line(err, "ptq.py")
    assert code == 2 and reason in line, line
    assert snapshot(victims) == before


def test_train_takes_over_an_empty_dir_and_a_run_dir_from_before_markers(capsys, tmp_path, monkeypatch):
    import repq.training
    monkeypatch.setattr(repq.training, "fit_model", _stop)
    (tmp_path / "empty").mkdir()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "run_config.json").write_text(json.dumps({"model": "ecbsr_m4c16", "recipe": {}}))
    for run_dir in (tmp_path / "empty", legacy):
        code, err = run_train(capsys, "--model=ecbsr_m4c16", "--limit=2", f"--output_dir={run_dir}")
        assert code == 1 and "stopped by the test" in err, err[-2000:]
        assert outputs.read_marker(str(run_dir)) == "train"
        assert sorted(os.listdir(run_dir)) == [MARKER, "run_config.json"]
    code, err = run_train(capsys, "--model=ecbsr_m4c16", "--limit=2", f"--output_dir={legacy}")  # resumes
    assert code == 1 and "stopped by the test" in err and "left no results" not in err, err[-2000:]


def test_ptq_marks_a_new_run_dir(capsys, tmp_path, monkeypatch):
    from tests.test_ptq_resume import residual_model
    import repq.ptq
    monkeypatch.setattr(repq.ptq, "quantize_ptq", _stop)
    fp = str(tmp_path / "fp.keras")
    residual_model((32, 32, 3), 10, stem_stride=4).save(fp)
    code, err = run_ptq(capsys, "--model=resnet18", "--iters=4", "--calib_size=16", "--batch_size=8",
                        f"--fp_checkpoint={fp}", f"--output_dir={tmp_path / 'out'}")
    assert code == 1 and "stopped by the test" in err, err[-2000:]
    assert outputs.read_marker(str(tmp_path / "out")) == "ptq"


# --------------------------------------------------------------------- files: repq.convert --output

@pytest.mark.parametrize("name, overwrite, reason", [
    ("photos", True, "is a directory"),
    ("pipe", True, "is a FIFO (named pipe)"),
    ("pipe_link", True, "is a symbolic link to a FIFO"),
    ("notes.txt", False, "exists; pass --overwrite to replace it"),
])
def test_file_outputs_refuse_folders_special_files_and_unasked_overwrites(victims, name, overwrite, reason):
    before = snapshot(victims)
    with pytest.raises(OutputError, match=re.escape(reason)):
        atomic_file(str(victims / name), lambda tmp: open(tmp, "w").write("new"), overwrite=overwrite, flag="--output")
    assert snapshot(victims) == before


def test_file_output_replaces_a_regular_file_only_with_overwrite(tmp_path):
    target = tmp_path / "m.keras"
    target.write_text("old")
    atomic_file(str(target), lambda tmp: open(tmp, "w").write("new"), overwrite=True)
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["m.keras"]


def test_convert_cli_refuses_an_existing_file_without_overwrite(tmp_path):
    """One real process (its absl flags clash with train.py's in this one), checked before the
    checkpoint is read (here it does not even exist); the other cases are the same rules above."""
    (tmp_path / "out.keras").write_text("my model")
    before = snapshot(tmp_path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-m", "repq.convert", "--model", "ecbsr_m4c16_x2", "--torch_checkpoint",
                             str(tmp_path / "missing.pth"), "--output", str(tmp_path / "out.keras")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "--output" in lines[0] and "exists; pass --overwrite to replace it" in lines[0]
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------- file modes

@pytest.fixture
def umask():
    """Set the process umask for the test (restored after)."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_writers_give_ordinary_modes(tmp_path, umask, mask):
    from repq.export.files import atomic_directory
    umask(mask)
    assert outputs.current_umask() == mask
    atomic_file(str(tmp_path / "m.keras"), lambda tmp: open(tmp, "w").write("model"))
    with atomic_directory(str(tmp_path / "export")) as tmp:
        open(os.path.join(tmp, "x.txt"), "w").close()
    assert stat.S_IMODE(os.stat(tmp_path / "m.keras").st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(tmp_path / "export").st_mode) == 0o777 & ~mask
    assert stat.S_IMODE(os.stat(tmp_path / "export" / MARKER).st_mode) == 0o666 & ~mask


def test_exported_files_and_folders_have_ordinary_modes(tmp_path, umask):
    """A real (tiny) export: the bundle folder 0755, the .tflite and its reports 0644."""
    import repq
    from repq.export import export_all
    from repq.qat import quantize_model
    umask(0o022)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    qat = quantize_model(keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(x)), 4, 4)
    images = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32")
    qat(images, training=True)
    export_all(qat, str(tmp_path / "bundle"), [images], formats=("tflite",))
    repq.export_savedmodel(qat, str(tmp_path / "sm"))
    for path in (tmp_path / "bundle", tmp_path / "sm"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o755, path
    for name in ("model_int8.tflite", "model_int8_fidelity.json", "model_int8_fidelity.md", MARKER):
        assert stat.S_IMODE(os.stat(tmp_path / "bundle" / name).st_mode) == 0o644, name
    assert outputs.read_marker(str(tmp_path / "bundle")) == "export"
