"""Statistics shared by the results tables: the sample std over seeds, the "beyond noise" test, and the
binomial standard error of one accuracy measured on a finite test set."""

import numpy as np


def sample_std(values):
    """Sample standard deviation (ddof=1) of ``values``; 0.0 for a single value (no spread measured)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def beyond_noise(a, b):
    """Whether mean(a) - mean(b) exceeds twice the standard error of that difference
    (``sqrt(var(a)/n_a + var(b)/n_b)``, sample variances); never with a single value on either side."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    se = np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)) if min(len(a), len(b)) > 1 else np.inf
    return bool(abs(a.mean() - b.mean()) > 2 * se)


def binomial_se(percent, num_test):
    """Standard error, in percentage points, of one top-1 accuracy of ``percent`` % measured on ``num_test``
    test images: ``100 * sqrt(p (1 - p) / n)`` with p = percent / 100 (the test set's sampling noise)."""
    p = percent / 100.0
    return 100.0 * float(np.sqrt(p * (1.0 - p) / num_test))
