"""skimage_sr: super-resolution on photographs bundled in the scikit-image wheel (offline).

ECBSR conventions (SPEC 4.4): networks see the Y channel in 0..255, not rounded, not
rescaled; Y = 16 + 65.481 R + 128.553 G + 24.966 B with R, G, B in [0, 1] (gray images:
Y = 16 + 219 gray / 255). LR = bicubic downsampling of the HR (cropped to a multiple of the
scale) with tf.image.resize(method="bicubic", antialias=True), in float (MATLAB-imresize
style, like DIV2K's official LR), computed once per image.

Split by image. Train: random aligned patches of the whole images (HR side `patch_size`,
default 32 * scale -> LR 32), `repeat_patches` per image per epoch, with hflip, vflip and
transpose each p=0.5. Test: the center HR crop of `image_size` x `image_size` (default 240,
a multiple of 2, 3 and 4) of every test image, so test batches can hold several images.

The conversions, the flat image layout with its patch sampler and the flips are shared with
div2k and srfolder (the public functions below).
"""

import functools

import numpy as np
import tensorflow as tf

from repq.data import common
from repq.data.common import DatasetInfo

NAME = "skimage_sr"
# Photographs shipped inside the scikit-image wheel (no pooch download); synthetic images
# (logo, colorwheel, text, page, horse, checkerboard) and tiny ones are left out.
TRAIN_IMAGES = ("astronaut", "brick", "cell", "grass", "gravel", "hubble_deep_field",
                "immunohistochemistry", "moon", "retina", "rocket", "stereo_motorcycle")
TEST_IMAGES = ("camera", "chelsea", "coffee", "coins")
LR_PATCH = 32  # default LR patch side
REPEAT_PATCHES = 64  # default patches per training image per epoch
TEST_HR_SIZE = 240  # default side of the test center crop; every test image is >= 300
RGB_TO_Y = (65.481, 128.553, 24.966)


def info(scale):
    """DatasetInfo of skimage_sr at upscaling factor `scale`."""
    return DatasetInfo(NAME, "super_resolution", None, (None, None, 1),
                       len(TRAIN_IMAGES), len(TEST_IMAGES), scale)


def rgb_to_y(rgb):
    """uint8 (H, W, 3) RGB -> float32 (H, W) Y in [16, 235] (ECBSR / skimage rgb2ycbcr)."""
    return (16.0 + (rgb.astype(np.float64) / 255.0) @ np.array(RGB_TO_Y)).astype(np.float32)


def rgb_to_y_tf(rgb):
    """uint8 (..., 3) RGB tensor -> float32 (...) Y: rgb_to_y in TF (same float64 arithmetic)."""
    rgb = tf.cast(rgb, tf.float64) / 255.0
    return tf.cast(16.0 + tf.tensordot(rgb, tf.constant(RGB_TO_Y, tf.float64), 1), tf.float32)


def gray_to_y(gray):
    """uint8 (H, W) gray -> float32 (H, W) Y in [16, 235]; equals rgb_to_y with R = G = B."""
    return (16.0 + 219.0 * gray.astype(np.float64) / 255.0).astype(np.float32)


@functools.lru_cache(maxsize=None)
def load_y(name):
    """float32 (H, W) Y channel of the skimage.data image `name`."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
        image = image[0]  # (left, right, disparity): the left view
    if image.dtype != np.uint8:
        raise TypeError(f"skimage.data.{name} is {image.dtype}, expected uint8")
    return rgb_to_y(image) if image.ndim == 3 else gray_to_y(image)


def crop_to_multiple(image, scale):
    """(H, W) -> top-left (H - H % scale, W - W % scale) crop."""
    h, w = image.shape[:2]
    return image[:h - h % scale, :w - w % scale]


def downsample(hr, scale):
    """float32 (H, W) HR, H and W multiples of scale -> float32 (H/scale, W/scale) bicubic LR."""
    h, w = hr.shape
    lr = tf.image.resize(hr[None, :, :, None], (h // scale, w // scale), method="bicubic",
                         antialias=True)
    return lr[0, :, :, 0].numpy()


def flatten(hrs, scale):
    """Y images (H, W), H and W multiples of scale -> their flat layout for patch_sampler and
    image_getter: (lr, hr, lr_offsets, hr_offsets, lr_shapes (N, 2)), LR = downsample(HR)."""
    lrs = [downsample(hr, scale) for hr in hrs]
    offsets = [np.cumsum([0] + [im.size for im in images[:-1]]) for images in (lrs, hrs)]
    return (np.concatenate([lr.ravel() for lr in lrs]), np.concatenate([hr.ravel() for hr in hrs]),
            *offsets, np.array([lr.shape for lr in lrs], np.int64))


@functools.lru_cache(maxsize=None)
def _train_arrays(scale):
    """All training images flattened (see flatten)."""
    return flatten([crop_to_multiple(load_y(name), scale) for name in TRAIN_IMAGES], scale)


def _test_arrays(scale, size):
    """(LR (N, size/scale, size/scale, 1), HR (N, size, size, 1)) center crops, float32."""
    hrs = []
    for name in TEST_IMAGES:
        y = load_y(name)
        top, left = (y.shape[0] - size) // 2, (y.shape[1] - size) // 2
        hrs.append(y[top:top + size, left:left + size])
    lrs = [downsample(hr, scale) for hr in hrs]
    return np.stack(lrs)[..., None], np.stack(hrs)[..., None]


def patch_sampler(arrays, scale, patch_size):
    """flatten() arrays -> (image index, seed) -> aligned random (LR (p/s, p/s, 1), HR (p, p, 1))
    patch pair."""
    flat_lr, flat_hr, lr_offsets, hr_offsets, lr_shapes = (tf.constant(a) for a in arrays)
    lr_patch = patch_size // scale
    lr_range = tf.range(lr_patch, dtype=tf.int64)
    hr_range = tf.range(patch_size, dtype=tf.int64)

    def sample(index, seed):
        h, w = lr_shapes[index][0], lr_shapes[index][1]
        top_seed, left_seed = common.split_seed(seed, 2)
        top = tf.random.stateless_uniform([], top_seed, 0, h - lr_patch + 1, tf.int64)
        left = tf.random.stateless_uniform([], left_seed, 0, w - lr_patch + 1, tf.int64)
        lr_index = ((top + lr_range)[:, None] * w + (left + lr_range)[None, :])
        hr_index = ((top * scale + hr_range)[:, None] * (w * scale)
                    + (left * scale + hr_range)[None, :])
        lr = tf.gather(flat_lr, lr_offsets[index] + lr_index)
        hr = tf.gather(flat_hr, hr_offsets[index] + hr_index)
        return lr[..., None], hr[..., None]

    return sample


def image_getter(arrays, scale):
    """flatten() arrays -> image index -> the whole (LR (h, w, 1), HR (h*s, w*s, 1)) pair."""
    flat_lr, flat_hr, lr_offsets, hr_offsets, lr_shapes = (tf.constant(a) for a in arrays)

    def get(index):
        h, w = lr_shapes[index][0], lr_shapes[index][1]
        lr = flat_lr[lr_offsets[index]:lr_offsets[index] + h * w]
        hr = flat_hr[hr_offsets[index]:hr_offsets[index] + h * w * scale * scale]
        return tf.reshape(lr, [h, w, 1]), tf.reshape(hr, [h * scale, w * scale, 1])

    return get


def dihedral(image, flips):
    """Apply hflip, vflip, transpose of (H, H, C) `image` where the bools `flips` (3,) say."""
    image = tf.where(flips[0], image[:, ::-1], image)
    image = tf.where(flips[1], image[::-1], image)
    return tf.where(flips[2], tf.transpose(image, [1, 0, 2]), image)


def random_flips(lr, hr, seed):
    """The train augmentation: the same hflip, vflip, transpose (each p=0.5) of both patches."""
    flips = tf.random.stateless_uniform([3], seed) < 0.5
    return dihedral(lr, flips), dihedral(hr, flips)


def check_scale(name, scale):
    """Raise ValueError unless scale >= 2."""
    if scale < 2:
        raise ValueError(f"{name}: scale must be >= 2, got {scale}")


def check_no_image_size(name, image_size):
    """Raise ValueError when image_size is given to a whole-image SR set (div2k, srfolder)."""
    if image_size is not None:
        raise ValueError(f"{name}: image_size={image_size} is not supported: its test images "
                         "are served whole (one per batch) and train patches are sized by "
                         "patch_size")


def check_patch_size(name, scale, patch_size, smallest):
    """Raise ValueError unless patch_size is a multiple of scale in [scale, smallest]."""
    if patch_size % scale or not scale <= patch_size <= smallest:
        raise ValueError(f"{name}: patch_size={patch_size} must be a multiple of scale={scale} "
                         f"and at most {smallest}")


def patch_elements(arrays, *, scale, patch_size, repeat_patches, shuffle, augment, seed):
    """Unbatched aligned random (LR, HR) patches of the flatten()ed images, `repeat_patches`
    per image per epoch, flipped when `augment`."""
    num_images = len(arrays[-1])
    ds = tf.data.Dataset.range(num_images).repeat(repeat_patches)
    if shuffle:
        ds = ds.shuffle(num_images * repeat_patches, seed=seed, reshuffle_each_iteration=True)
    sample = patch_sampler(arrays, scale, patch_size)

    def transform(index, element_seed):
        patch_seed, flip_seed = common.split_seed(element_seed, 2)
        lr, hr = sample(index, patch_seed)
        return random_flips(lr, hr, flip_seed) if augment else (lr, hr)

    return common.with_element_seeds(ds, seed).map(transform, num_parallel_calls=common.AUTOTUNE)


def _check(scale, patch_size, test_size):
    """Raise ValueError for sizes the images cannot serve."""
    check_scale(NAME, scale)
    smallest_train = min(min(crop_to_multiple(load_y(n), scale).shape) for n in TRAIN_IMAGES)
    smallest_test = min(min(load_y(n).shape) for n in TEST_IMAGES)
    check_patch_size(NAME, scale, patch_size, smallest_train)
    if test_size % scale or not scale <= test_size <= smallest_test:
        raise ValueError(f"{NAME}: image_size={test_size} (test HR crop) must be a multiple of "
                         f"scale={scale} and at most {smallest_test}")


def elements(split, *, scale, patch_size, repeat_patches, image_size, shuffle, augment, seed):
    """Unbatched (LR float32 (h, w, 1), HR float32 (h*scale, w*scale, 1)) Y pairs in 0..255."""
    patch_size = patch_size or LR_PATCH * scale
    test_size = image_size or TEST_HR_SIZE
    repeat_patches = repeat_patches or REPEAT_PATCHES
    _check(scale, patch_size, test_size)
    if split == "test":
        ds = tf.data.Dataset.from_tensor_slices(_test_arrays(scale, test_size))
        return ds.shuffle(len(TEST_IMAGES), seed=seed) if shuffle else ds
    return patch_elements(_train_arrays(scale), scale=scale, patch_size=patch_size,
                          repeat_patches=repeat_patches, shuffle=shuffle, augment=augment,
                          seed=seed)
