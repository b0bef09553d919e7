"""folder:<path>: the user's images, one subfolder per class.

Layout: `<path>/train/<class>/*` and `<path>/test/<class>/*`, or `<path>/<class>/*` split
80/20 per class with a fixed seed. Class labels are the sorted class-folder names of the
training folder. Files with an image extension are checked up front: a file whose first
bytes are not a PNG/JPEG/GIF/BMP signature is skipped with a Python warning naming it. A
file that passes that check but still fails to decode is dropped by
`tf.data.Dataset.ignore_errors` (TF logs it at WARNING level, hidden when
TF_CPP_MIN_LOG_LEVEL >= 2), so one bad file never stops training.
"""

import dataclasses
import functools
import os
import warnings

import numpy as np
import tensorflow as tf

from repq.data import common, subsets
from repq.data.common import DatasetInfo

PREFIX = "folder:"
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
DEFAULT_IMAGE_SIZE = 224
TEST_FRACTION = 0.2
SPLIT_SEED = 0
LAYOUT = ("Expected one subfolder per class (<dir>/<class>/*.png|jpg|...), or train/ and "
          "test/ subfolders each holding class subfolders.")


@dataclasses.dataclass(frozen=True)
class Listing:
    """Class names and the (path, label) pairs of both splits."""

    classes: tuple
    train: tuple
    test: tuple


def info(name, image_size):
    """DatasetInfo of `folder:<path>`; images are served at image_size (default 224)."""
    listing = scan(root_of(name))
    size = image_size or DEFAULT_IMAGE_SIZE
    return DatasetInfo(name, "classification", len(listing.classes), (size, size, 3),
                       len(listing.train), len(listing.test), None)


def root_of(name):
    """`folder:<path>` -> absolute path."""
    return os.path.abspath(os.path.expanduser(name[len(PREFIX):]))


def _is_image(path):
    """True when the file starts with a PNG/JPEG/GIF/BMP signature."""
    with open(path, "rb") as f:
        head = f.read(8)
    return head.startswith(SIGNATURES)


def _class_files(directory):
    """{class name: sorted image paths} of a folder with one subfolder per class."""
    entries = sorted(os.listdir(directory))
    if not entries:
        raise ValueError(f"Dataset folder {directory} is empty. {LAYOUT}")
    classes = [e for e in entries if os.path.isdir(os.path.join(directory, e))]
    if not classes:
        raise ValueError(f"Dataset folder {directory} has no class subfolders (found files "
                         f"such as {entries[0]!r}). {LAYOUT}")
    files, rejected = {name: [] for name in classes}, []
    for name in classes:
        found = sorted(os.path.join(root, f)
                       for root, _, names in os.walk(os.path.join(directory, name))
                       for f in names if f.lower().endswith(IMAGE_EXTENSIONS))
        for path in found:
            (files[name] if _is_image(path) else rejected).append(path)
    if rejected:
        warnings.warn(f"Skipping {len(rejected)} file(s) that are not PNG/JPEG/GIF/BMP images: "
                      f"{', '.join(rejected[:5])}{' ...' if len(rejected) > 5 else ''}",
                      stacklevel=2)
    if not any(files.values()):
        raise ValueError(f"Dataset folder {directory} has class subfolders but no image files "
                         f"({', '.join(IMAGE_EXTENSIONS)}). {LAYOUT}")
    with_images = [name for name, paths in files.items() if paths]
    if len(with_images) < 2:  # one class: every prediction is right, training would report 100 %
        raise ValueError(f"Dataset folder {directory} has images of only one class ({with_images[0]!r}); "
                         f"a classification dataset needs at least 2 class subfolders. {LAYOUT}")
    return files


def _split(files):
    """{class: paths} -> (train, test) (path, label) tuples, TEST_FRACTION per class."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for label, paths in enumerate(files.values()):
        order = rng.permutation(len(paths))
        num_test = int(round(TEST_FRACTION * len(paths)))
        test += [(paths[i], label) for i in sorted(order[:num_test])]
        train += [(paths[i], label) for i in sorted(order[num_test:])]
    return tuple(train), tuple(test)


def _pairs(files, labels):
    """{class: paths} -> (path, label) tuples with the given class -> label map."""
    return tuple((path, labels[name]) for name, paths in files.items() for path in paths)


@functools.lru_cache(maxsize=None)
def scan(root):
    """List and check the images under `root` once per process -> Listing."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Dataset folder {root} does not exist or is not a directory; "
                                f"pass folder:/path/to/images. {LAYOUT}")
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    if not (os.path.isdir(train_dir) or os.path.isdir(test_dir)):
        files = _class_files(root)
        return Listing(tuple(files), *_split(files))
    if not (os.path.isdir(train_dir) and os.path.isdir(test_dir)):
        raise ValueError(f"Dataset folder {root} has only one of train/ and test/. {LAYOUT}")
    train, test = _class_files(train_dir), _class_files(test_dir)
    unknown = sorted(set(test) - set(train))
    if unknown:
        raise ValueError(f"{test_dir} has classes missing from {train_dir}: {unknown}")
    labels = {name: label for label, name in enumerate(train)}
    return Listing(tuple(train), _pairs(train, labels), _pairs(test, labels))


def elements(name, split, *, image_size, shuffle, augment, seed):
    """Unbatched (x float32 (S, S, 3) ImageNet-normalised, y int32) elements.

    Train augmentation: random-resized-crop + h-flip; otherwise resize the shorter side to
    S*256/224 and center-crop S. Unshuffled, the examples come in a fixed class-stratified
    order (``subsets.stratified_order``), not sorted by class.
    """
    root = root_of(name)
    pairs = getattr(scan(root), split)
    if not pairs:
        raise ValueError(f"Dataset folder {root}: the {split} split has no images. {LAYOUT}")
    size = image_size or DEFAULT_IMAGE_SIZE
    if not shuffle:  # class-stratified order: a first N (limit, --num_eval) spans the classes
        pairs = [pairs[i] for i in subsets.stratified_order([label for _, label in pairs], SPLIT_SEED)]
    paths, labels = zip(*pairs)
    ds = tf.data.Dataset.from_tensor_slices((list(paths), np.array(labels, np.int32)))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)

    def transform(example, element_seed):
        path, label = example
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = (common.random_resized_crop_flip(image, size, element_seed) if augment
                 else common.resize_center_crop(image, size))
        return common.normalize(image, common.IMAGENET_MEAN_STD), label

    ds = common.with_element_seeds(ds, seed).map(transform, num_parallel_calls=common.AUTOTUNE)
    return ds.ignore_errors(log_warning=True)
