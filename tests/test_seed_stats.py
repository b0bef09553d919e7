"""benchmarks.seed_stats against the standard library's statistics module."""

import math
import statistics

from benchmarks.seed_stats import beyond_noise, sample_std


def test_sample_std_is_the_ddof1_std_and_zero_for_one_seed():
    values = [97.3, 96.8, 97.7]
    assert abs(sample_std(values) - statistics.stdev(values)) < 1e-12
    assert sample_std([98.5]) == 0.0


def test_beyond_noise_is_twice_the_standard_error_of_the_difference():
    a, b = [98.5, 98.4, 98.5], [93.0, 92.4, 93.6]
    se = math.sqrt(statistics.variance(a) / 3 + statistics.variance(b) / 3)  # ~0.35
    assert abs(statistics.mean(a) - statistics.mean(b)) > 2 * se and beyond_noise(a, b) and beyond_noise(b, a)
    close = [98.3, 98.6, 98.4]  # mean difference 0.03 against a standard error of ~0.09
    assert not beyond_noise(a, close)
    # just either side of the threshold: b shifted so the difference is 2 se -/+ 1e-6
    shift = statistics.mean(a) - statistics.mean(b) - 2 * se
    assert not beyond_noise(a, [v + shift + 1e-6 for v in b]) and beyond_noise(a, [v + shift - 1e-6 for v in b])
    assert not beyond_noise([99.0], [90.0, 91.0])  # one seed: no spread measured, never beyond noise
