"""Shared pieces of the input pipelines: DatasetInfo, normalisation, seeded augmentation.

Images are HWC tensors; pixel values are in 0..255 until `normalize`. Every random op is a
stateless TF op fed by a per-element seed from `with_element_seeds`, so a pipeline is
deterministic under its `seed` (also with parallel maps) and still draws new
augmentations each epoch.
"""

import dataclasses

import math

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE

# Per-channel (mean, std) of images scaled to [0, 1].
# MNIST's usual constants (of the 28x28 digits); the 2-pixel zero border of the 32x32
# version lowers the true mean slightly, which does not matter for training.
MNIST_MEAN_STD = ((0.1307,) * 3, (0.3081,) * 3)
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# Test-time resize of the ImageNet recipe: shorter side 256 for a 224 crop.
RESIZE_RATIO = 256 / 224


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset.

    image_shape is the model input shape (H, W, C); for super-resolution the LR shape
    (None, None, 1). num_train/num_test count examples of the full splits (images for
    super-resolution). scale is the SR upscaling factor (None for classification).
    """

    name: str
    task: str
    num_classes: int | None
    image_shape: tuple
    num_train: int
    num_test: int
    scale: int | None


def normalize(images, mean_std):
    """(..., H, W, 3) pixels in 0..255 -> float32 (x / 255 - mean) / std."""
    mean, std = mean_std
    x = tf.cast(images, tf.float32) / 255.0
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def with_element_seeds(ds, seed):
    """Zip every element with an int64 (2,) seed for stateless random ops.

    The seeds are deterministic under `seed` and differ on every iteration (epoch).
    """
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds))


def split_seed(seed, num):
    """(2,) seed -> `num` independent (2,) seeds."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def pad_random_crop(image, pad, seed):
    """Random translation: zero-pad `pad` pixels on each side, crop back to (H, W, C)."""
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, tf.shape(image), seed)


def affine_transform(image, degrees, zoom, tx, ty):
    """Rotate by ``degrees``, zoom by ``zoom`` and translate by ``(tx, ty)`` pixels about the image
    centre; bilinear, zero fill. (H, W, C) -> float32 (H, W, C). Scalars may be tensors."""
    angle = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    zoom, tx, ty = (tf.cast(v, tf.float32) for v in (zoom, tx, ty))
    height, width = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # output pixel (x, y) reads input (cos*dx + sin*dy + cx, -sin*dx + cos*dy + cy), d = (x, y) - centre - shift
    transform = tf.stack([cos, sin, cx - cos * (cx + tx) - sin * (cy + ty),
                          -sin, cos, cy + sin * (cx + tx) - cos * (cy + ty), 0.0, 0.0])
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None], transforms=transform[None], output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]


def random_affine(image, seed, degrees, scale, shift):
    """:func:`affine_transform` with a rotation uniform in +-``degrees``, a zoom in ``[1 - scale, 1 + scale]``
    and a translation uniform in +-``shift`` pixels per axis, drawn from the (2,) ``seed``."""
    angle_seed, zoom_seed, shift_seed = split_seed(seed, 3)
    tx, ty = tf.unstack(tf.random.stateless_uniform((2,), shift_seed, -shift, shift))
    return affine_transform(image, tf.random.stateless_uniform((), angle_seed, -degrees, degrees),
                            tf.random.stateless_uniform((), zoom_seed, 1.0 - scale, 1.0 + scale), tx, ty)


def resize(image, size):
    """(H, W, C) -> float32 (size, size, C), bilinear with antialiasing."""
    return tf.image.resize(image, (size, size), method="bilinear", antialias=True)


def random_resized_crop_flip(image, size, seed, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Train transform of a decoded (H, W, 3) image -> float32 (size, size, 3) in 0..255.

    Inception-style crop with a random area fraction and aspect ratio (torchvision's
    RandomResizedCrop; the whole image after 10 failed attempts), resize, random h-flip.
    """
    crop_seed, flip_seed = split_seed(seed, 2)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), crop_seed,
        min_object_covered=0.0, aspect_ratio_range=ratio, area_range=area, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    image = resize(tf.slice(image, begin, crop_size), size)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def resize_center_crop(image, size):
    """Test transform: resize the shorter side to size*256/224, center-crop (size, size)."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    short = tf.round(size * RESIZE_RATIO)
    new_hw = tf.cast(tf.round(hw * short / tf.reduce_min(hw)), tf.int32)
    resized = tf.image.resize(image, new_hw, method="bilinear", antialias=True)
    top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
    return tf.image.crop_to_bounding_box(resized, top, left, size, size)


def check_fixed_size(name, image_size, size):
    """Raise unless image_size is None or the dataset's only size."""
    if image_size not in (None, size):
        raise ValueError(f"{name} images are {size}x{size}; image_size={image_size} is not "
                         "supported (leave image_size unset)")
