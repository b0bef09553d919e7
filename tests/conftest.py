"""Shared test setup: quiet TF logs, deterministic seeds, helpers for BN statistics."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from repq.graph import all_layers  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def randomize_norms(model_or_layer, seed=0):
    """Give every BatchNormalization non-trivial gamma, beta and moving statistics."""
    rng = np.random.default_rng(seed)
    layers = [model_or_layer, *all_layers(model_or_layer)]
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.built:
            shape = layer.moving_mean.shape
            layer.gamma.assign(rng.uniform(0.5, 1.5, shape))
            layer.beta.assign(rng.normal(0, 0.2, shape))
            layer.moving_mean.assign(rng.normal(0, 0.2, shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape))


def rel_max_error(reference, value):
    """max |reference - value| / max |reference|."""
    reference, value = np.asarray(reference), np.asarray(value)
    return float(np.abs(reference - value).max() / max(np.abs(reference).max(), 1e-12))


def moving_statistics(model):
    """Copies of every moving BN statistic (moving mean and variance) of ``model``, in variable order."""
    return [v.numpy().copy() for v in model.non_trainable_variables if "moving" in v.path]
