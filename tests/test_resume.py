"""Resumable training: crash/SIGTERM and rerun -> the same final weights as an uninterrupted run."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from repq.layers import RepVGGBlock
from repq.qat import calibrate, quantize_model
from repq.training import CheckpointError, SimulatedCrash, fit_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _recipe(epochs=3, freeze_bn_after=None):
    recipe = importlib.import_module("repq.configs.repvgg_a0").get_config()
    recipe.fp_epochs = recipe.qat_epochs = epochs
    recipe.freeze_bn_after = freeze_bn_after
    recipe.select_best = freeze_bn_after is None  # with a freeze: the last epoch's weights, which the freeze moves
    recipe.steps_per_epoch = None
    recipe.warmup_epochs = 1
    return recipe  # select_best: the best-epoch bookkeeping must survive the restart


def _data(seed=0, n=24):
    """A shuffled, seeded pipeline (fresh shuffle every pass), built fresh for every run."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(8), \
        tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def _qat_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = RepVGGBlock(8, name="b0")(inputs)
    x = RepVGGBlock(8, name="b1")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    qat = quantize_model(keras.Model(inputs, keras.layers.Dense(2)(x)), 4, 4)
    calibrate(qat, np.random.default_rng(1).normal(size=(8, 8, 8, 3)).astype("float32"))
    return qat


def _train(output_dir, crash_after_steps=None, freeze_bn_after=None):
    model = _qat_model()
    train, test = _data()
    fit_model(model, train, test, _recipe(freeze_bn_after=freeze_bn_after), "qat", weight_bits=4,
              output_dir=str(output_dir), verbose=0,
              crash_after_steps=crash_after_steps)
    return model


@pytest.mark.parametrize("freeze_bn_after, crash_after_steps", [(None, 5), (1, 8)])
def test_crash_and_resume_equals_uninterrupted(tmp_path, freeze_bn_after, crash_after_steps):
    """3 steps per epoch: step 5 is mid-epoch 2, step 8 mid-epoch 3. With ``freeze_bn_after=1`` the
    run resumes at epoch 3, past the freeze: it must freeze the BN statistics again before its first
    step, or its moving statistics (in ``get_weights``) and kernels leave the reference's."""
    reference = _train(tmp_path / "ref", freeze_bn_after=freeze_bn_after)
    with pytest.raises(SimulatedCrash):
        _train(tmp_path / "run", crash_after_steps=crash_after_steps, freeze_bn_after=freeze_bn_after)
    state = json.loads((tmp_path / "run" / "backup" / "qat" / "state.json").read_text())
    assert state["epoch"] == crash_after_steps // 3
    if freeze_bn_after is None:
        assert state["best_epoch"] == 1
    resumed = _train(tmp_path / "run", freeze_bn_after=freeze_bn_after)
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert not (tmp_path / "run" / "backup").exists()  # removed when the stage completes


@pytest.mark.parametrize("damage", ["truncate", "garbage", "state"])
def test_corrupt_checkpoint_is_reported_not_used(tmp_path, damage):
    with pytest.raises(SimulatedCrash):
        _train(tmp_path, crash_after_steps=4)
    folder = tmp_path / "backup" / "qat"
    weights = folder / json.loads((folder / "state.json").read_text())["weights"]
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage":
        weights.write_bytes(os.urandom(4096))
    else:
        (folder / "state.json").write_text('{"epoch": ')
    with pytest.raises(CheckpointError) as info:
        _train(tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message and "delete" in message


def _train_cli(*args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _weights(path):
    return keras.saving.load_model(path, compile=False).get_weights()


@pytest.mark.slow
def test_cli_sigterm_then_rerun_resumes_to_the_same_result(tmp_path):
    """train.py (FP -> QAT, ECBSR, tiny): SIGTERM during QAT, rerun: the FP stage is not redone, the QAT
    stage resumes from its last epoch checkpoint, and the final model equals an uninterrupted run's."""
    common = ["--model=ecbsr_m4c16", "--bits=4", "--limit=4", "--batch_size=1", "--fp_epochs=1", "--epochs=3"]
    reference = _train_cli(*common, f"--output_dir={tmp_path / 'ref'}")
    run = tmp_path / "run"
    proc = _train_cli(*common, f"--output_dir={run}")
    deadline = time.time() + 400
    while not (run / "backup" / "qat" / "state.json").exists():  # QAT epoch 1 done
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted (received SIGTERM)" in err and "Traceback" not in err
    assert (run / "fp_model.keras").exists() and not (run / "qat_model.keras").exists()
    fp_mtime = os.path.getmtime(run / "fp_model.keras")
    proc = _train_cli(*common, f"--output_dir={run}")
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    assert "fp_model.keras exists: stage already done" in err
    assert os.path.getmtime(run / "fp_model.keras") == fp_mtime
    _, err = reference.communicate(timeout=400)
    assert reference.returncode == 0, err[-3000:]
    for a, b in zip(_weights(str(tmp_path / "ref" / "qat_model.keras")), _weights(str(run / "qat_model.keras"))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
