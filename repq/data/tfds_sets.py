"""cifar10 and imagenet2012 through tensorflow_datasets, never downloading at run time.

`tfds.load(..., download=False)`: a dataset that is not prepared in `data_dir` fails at once
with a FileNotFoundError that says how to prepare it. The one exception is imagenet2012
whose archives the user has put into `<data_dir>/downloads/manual/`: it is then prepared
from there (offline; takes hours once).
"""

import dataclasses
import os

import tensorflow as tf

from repq.data import common
from repq.data.common import DatasetInfo

CIFAR_PAD = 4  # train augmentation: random translation by up to 4 pixels
IMAGENET_ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


@dataclasses.dataclass(frozen=True)
class _Spec:
    num_classes: int
    image_size: int  # default model input side
    test_split: str  # the tfds split served as "test"
    num_train: int
    num_test: int
    shuffle_buffer: int  # examples; ImageNet holds encoded JPEGs (~110 kB each)


SPECS = {
    "cifar10": _Spec(10, 32, "test", 50_000, 10_000, 10_000),
    "imagenet2012": _Spec(1000, 224, "validation", 1_281_167, 50_000, 5_000),
}


def info(name, image_size):
    """DatasetInfo of a tfds dataset; cifar10 has the fixed size 32, ImageNet default 224."""
    spec = SPECS[name]
    if name == "cifar10":
        common.check_fixed_size(name, image_size, spec.image_size)
    size = image_size or spec.image_size
    return DatasetInfo(name, "classification", spec.num_classes, (size, size, 3),
                       spec.num_train, spec.num_test, None)


def _data_dir(data_dir):
    """data_dir, or tfds's default (TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    import tensorflow_datasets as tfds

    return data_dir or tfds.core.constants.DATA_DIR


def not_prepared(name, data_dir):
    """FileNotFoundError telling how to prepare `name` in `data_dir`."""
    where = _data_dir(data_dir)
    if name == "imagenet2012":
        manual = os.path.join(where, "downloads", "manual")
        how = (f"download {' and '.join(IMAGENET_ARCHIVES)} from https://image-net.org into "
               f"{manual}/ and run again (it is prepared from there, offline), or run "
               f"`tfds build imagenet2012 --data_dir={where} --manual_dir={manual}`")
    else:
        how = (f"on a machine with network run `tfds build {name} --data_dir=DIR`, copy DIR "
               "here and pass it as data_dir (--data_dir)")
    return FileNotFoundError(f"Dataset {name} is not prepared in {where} and nothing is "
                             f"downloaded at run time: {how}.")


def _prepare_imagenet_from_manual(data_dir):
    """Prepare imagenet2012 from the archives in <data_dir>/downloads/manual, if all are there."""
    import tensorflow_datasets as tfds

    manual = os.path.join(_data_dir(data_dir), "downloads", "manual")
    if not all(os.path.exists(os.path.join(manual, f)) for f in IMAGENET_ARCHIVES):
        return
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    if not builder.is_prepared():
        tf.get_logger().warning("Preparing imagenet2012 from %s (takes hours, once)", manual)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual, try_download_gcs=False))


def _load(name, split, *, data_dir, shuffle, seed):
    """(image uint8 (H, W, 3), label int32) examples of a prepared tfds dataset."""
    import tensorflow_datasets as tfds

    if name == "imagenet2012":
        _prepare_imagenet_from_manual(data_dir)
    tfds_split = "train" if split == "train" else SPECS[name].test_split
    try:
        ds = tfds.load(name, split=tfds_split, data_dir=data_dir, download=False,
                       as_supervised=True, shuffle_files=shuffle,
                       read_config=tfds.ReadConfig(shuffle_seed=seed))
    except AssertionError as error:  # tfds: "could not find data in ..."
        raise not_prepared(name, data_dir) from error
    return ds.map(lambda image, label: (image, tf.cast(label, tf.int32)),
                  num_parallel_calls=common.AUTOTUNE)


def elements(name, split, *, data_dir, image_size, shuffle, augment, seed):
    """Unbatched (x float32 (S, S, 3) ImageNet-normalised, y int32) elements.

    cifar10: decoded images cached in memory (~150 MB for train); train augmentation is a
    random 4-pixel translation + h-flip. imagenet2012 / size S: train random-resized-crop
    + h-flip; otherwise resize the shorter side to S*256/224 and center-crop S.
    """
    spec = SPECS[name]
    size = info(name, image_size).image_shape[0]
    ds = _load(name, split, data_dir=data_dir, shuffle=shuffle, seed=seed)
    if name == "cifar10":
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(spec.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def transform(example, element_seed):
        image, label = example
        if name == "cifar10" and augment:
            translate_seed, flip_seed = common.split_seed(element_seed, 2)
            image = common.pad_random_crop(image, CIFAR_PAD, translate_seed)
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        elif name == "imagenet2012":
            image = (common.random_resized_crop_flip(image, size, element_seed) if augment
                     else common.resize_center_crop(image, size))
        return common.normalize(image, common.IMAGENET_MEAN_STD), label

    return common.with_element_seeds(ds, seed).map(transform, num_parallel_calls=common.AUTOTUNE)
