"""Data-driven step initialisation: MSE range search on activations and weights."""

import numpy as np
import pytest

from repq.observers import EMAStepObserver
from repq.quantizers import MAX_SEARCH_ELEMENTS, integer_range, mse_initial_step


def channel_imbalanced(channels=64):
    """NHWC activations whose channel 0 is tiny and the others large (post-ReLU)."""
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(size=(64, 32, 32, channels))).astype("float32")
    x[..., 0] *= 1e-3
    return x


def test_activation_search_sees_every_channel():
    """A stride that is a multiple of the channel count would read channel 0 only."""
    x = channel_imbalanced()
    assert x.size // MAX_SEARCH_ELEMENTS % x.shape[-1] == 0  # the aliasing case
    qmin, qmax = integer_range(8, signed=False)
    step = float(mse_initial_step(x, qmin, qmax))
    assert step * qmax > 0.5 * x.max()   # covers the large channels, not just channel 0


def test_ptq_observer_is_the_shared_search_averaged():
    """PTQ calibration uses QAT's search (one aliasing fix covers both), EMA'd over batches."""
    x = channel_imbalanced()
    qmin, qmax = integer_range(8, signed=False)
    observer = EMAStepObserver(qmin, qmax)
    observer.update(x)
    first = float(mse_initial_step(x, qmin, qmax))
    assert observer.step() == pytest.approx(first) and first * qmax > 0.5 * x.max()
    observer.update(2 * x)
    second = float(mse_initial_step(2 * x, qmin, qmax))
    assert observer.step() == pytest.approx(0.9 * first + 0.1 * second, rel=1e-6)


@pytest.mark.parametrize("bits", [4, 8])
def test_weight_search_is_per_channel_and_beats_max_scaling(bits):
    rng = np.random.default_rng(1)
    kernel = rng.standard_t(3, size=(3, 3, 16, 8)).astype("float32") * np.linspace(0.1, 2, 8)
    qmin, qmax = integer_range(bits, signed=True)
    steps = np.asarray(mse_initial_step(kernel, qmin, qmax, per_channel=True))
    assert steps.shape == (8,) and steps[-1] > 5 * steps[0]  # follows each channel's scale

    def error(s):
        q = np.clip(np.floor(kernel / s + 0.5), qmin, qmax) * s
        return np.mean(np.abs(q - kernel) ** 2.4, axis=(0, 1, 2))
    max_steps = np.abs(kernel).max(axis=(0, 1, 2)) / ((qmax - qmin) / 2)
    assert np.all(error(steps) <= error(max_steps) * (1 + 1e-5))  # i = 0 is max scaling


@pytest.mark.parametrize("shape,bits", [((3, 3, 16, 8), 4), ((1, 1, 24, 40), 2), ((200, 6), 8)])
def test_weight_search_picks_the_brute_force_minimum(shape, bits):
    """Per-channel search against an independent float64 brute force over the 80 candidate ranges."""
    rng = np.random.default_rng(2)
    kernel = rng.standard_t(4, size=shape).astype("float32")
    qmin, qmax = integer_range(bits, signed=True)
    steps = np.asarray(mse_initial_step(kernel, qmin, qmax, per_channel=True), np.float64)
    flat = kernel.reshape(-1, shape[-1]).astype(np.float64)
    candidates = np.abs(flat).max(axis=0) * (1 - 0.01 * np.arange(80))[:, None] / ((qmax - qmin) / 2)  # (K, C)
    errors = np.stack([np.mean(np.abs(np.clip(np.floor(flat / c + 0.5), qmin, qmax) * c - flat) ** 2.4, axis=0)
                       for c in candidates])
    picked = np.argmin(np.abs(candidates - steps[None, :]), axis=0)
    np.testing.assert_allclose(steps, candidates[picked, np.arange(shape[-1])], rtol=1e-6)  # one of the candidates
    chosen = errors[picked, np.arange(shape[-1])]
    np.testing.assert_array_less(chosen, errors.min(axis=0) * (1 + 1e-4) + 1e-12)  # float32 ties aside, the minimum
