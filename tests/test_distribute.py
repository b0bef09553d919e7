"""tf.distribute: MirroredStrategy and 2-worker MultiWorkerMirroredStrategy == one device on the same global batch.

Strategies run in subprocesses: logical CPU devices must be configured before TF initialises
its devices, and a second MirroredStrategy in a process that already ran one can fail with
"Shape mismatch in the collective instance".
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from repq.distribute import (StrategyError, check_global_batch, get_strategy, is_chief,
                             scaled_learning_rates)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trains a tiny RepQ QAT model (two RepVGG blocks with RepQ-BN: batch moments folded in the
# train step, so synchronized moments matter; then a synchronized BN, as in the zoo) for STEPS
# steps of a global batch of 8. The fit runs (one step per epoch) freeze the BN statistics after
# the first epoch: the second step must be retraced on every worker (distributed_fit) as in fit.
COMMON = r"""
import json, os, sys
import numpy as np
import tensorflow as tf
from repq.distribute import configure_cpu_devices, get_strategy, shard_by_data
import keras
from repq.layers import RepVGGBlock
from repq.qat import calibrate, quantize_model
from repq.training.fit import distributed_fit
from repq.callbacks import FreezeNormStatistics

def fit_model_or_distributed(model, data, **kwargs):
    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return distributed_fit(model, data, **kwargs)
    return model.fit(data, **kwargs)

STEPS = 2
rng = np.random.default_rng(0)
x = rng.normal(size=(8 * STEPS, 8, 8, 3)).astype("float32")
y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")

def train(strategy, use_fit=False, callbacks=()):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        inputs = keras.Input((8, 8, 3))
        h = RepVGGBlock(8, name="b0")(inputs)
        h = keras.layers.BatchNormalization(synchronized=True, name="bn")(RepVGGBlock(8, name="b1")(h))
        h = keras.layers.GlobalAveragePooling2D()(h)
        model = quantize_model(keras.Model(inputs, keras.layers.Dense(2)(h)), 4, 4)
        calibrate(model, x[:8])
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        data = shard_by_data(tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
        if use_fit:  # one step per "epoch"; distributed_fit under MultiWorkerMirroredStrategy
            history = fit_model_or_distributed(model, data.repeat(), epochs=STEPS, steps_per_epoch=1, verbose=0,
                                               validation_data=data, callbacks=list(callbacks))
            return history.history, [w.tolist() for w in model.get_weights()]
    # train_on_batch returns the loss of the GLOBAL batch (fit's logs report a per-replica value)
    losses = [float(model.train_on_batch(xb, yb)) for xb, yb in data.as_numpy_iterator()]
    return losses, [w.tolist() for w in model.get_weights()]
"""

MIRRORED = COMMON + r"""
configure_cpu_devices(2)
one = train(get_strategy("default"))
mirrored_strategy = get_strategy("mirrored", num_cpu_devices=2)
two = train(mirrored_strategy)
print("RESULT" + json.dumps(dict(replicas=mirrored_strategy.num_replicas_in_sync, one=one, two=two)))
"""

# Each worker trains on its half of every global batch; the chief writes the epoch checkpoints
# (StageCheckpoint), the other worker saves to a temporary file (Keras' save is a collective here).
WORKER = COMMON + r"""
from repq.distribute import is_chief
from repq.training import StageCheckpoint
strategy = get_strategy("multi_worker")
checkpoint = StageCheckpoint(sys.argv[1], write=is_chief(strategy))  # no monitor: ends with the last weights
logs, weights = train(strategy, use_fit=True, callbacks=[checkpoint, FreezeNormStatistics(1)])
print("RESULT" + json.dumps(dict(replicas=strategy.num_replicas_in_sync, chief=is_chief(strategy), logs=logs,
                                 weights=weights, saved=sorted(os.listdir(sys.argv[1])))))
"""

# The reference: one process, one device, Keras' own fit on the same global batches.
REFERENCE = COMMON + r"""
logs, weights = train(get_strategy("default"), use_fit=True, callbacks=[FreezeNormStatistics(1)])
print("RESULT" + json.dumps(dict(logs=logs, weights=weights)))
"""


def _env(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **extra)


def _result(stdout):
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])


def test_mirrored_two_cpu_replicas_equal_one_device_on_the_same_global_batch():
    proc = subprocess.run([sys.executable, "-c", MIRRORED], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _result(proc.stdout)
    assert result["replicas"] == 2
    (loss1, weights1), (loss2, weights2) = result["one"], result["two"]
    np.testing.assert_allclose(loss2, loss1, rtol=1e-4)  # loss of step 2 depends on the step-1 gradients
    for a, b in zip(weights1, weights2):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_worker_multi_worker_mirrored_run_completes(tmp_path):
    """2 local workers (TF_CONFIG over localhost) == one device, on the same global batches."""
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    procs = [subprocess.Popen([sys.executable, "-c", REFERENCE], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)]
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "backup")], cwd=ROOT,
                                      env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    reference, *results = [_result(out) for out, _ in outputs]
    assert [r["replicas"] for r in results] == [2, 2] and [r["chief"] for r in results] == [True, False]
    assert results[0]["saved"] == ["epoch_0002.weights.h5", "state.json"]
    for result in results:  # logs are all-reduced (every worker sees the global values), weights in sync
        assert result["logs"] == results[0]["logs"] and result["weights"] == results[0]["weights"]
        for key in ("loss", "val_loss"):  # step 2 depends on the step-1 gradients of the global batch
            np.testing.assert_allclose(result["logs"][key], reference["logs"][key], rtol=1e-5)
        for a, b in zip(reference["weights"], result["weights"]):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_strategy_helpers_and_errors(monkeypatch):
    with pytest.raises(StrategyError, match="unknown strategy 'horovod'"):
        get_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StrategyError, match="needs TF_CONFIG"):
        get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(StrategyError, match="TF_CONFIG is not valid"):
        get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"index": 3}}))
    with pytest.raises(StrategyError, match="outside the 1 workers"):
        get_strategy("multi_worker")
    assert get_strategy("default").num_replicas_in_sync == 1 and is_chief(get_strategy("default"))
    check_global_batch(64, 2)
    with pytest.raises(StrategyError, match="multiple of the 3 replicas"):
        check_global_batch(64, 3)
    assert scaled_learning_rates({"fp": 0.1, "qat": 0.01}, 512, 256) == pytest.approx({"fp": 0.2, "qat": 0.02})
