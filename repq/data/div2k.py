"""div2k: DIV2K (NTIRE 2017) super-resolution through tensorflow_datasets, never downloaded here.

Names: `div2k` (the factor is get_dataset's `scale`) or the explicit tfds config
`div2k/bicubic_x2` (also `_x3`, `_x4`, `_x8`; its factor must equal `scale`). The config must
be prepared beforehand in `data_dir` (`tfds build div2k/bicubic_x2 --data_dir DIR` on a
machine with network, then copy DIR); an unprepared config fails at once with a
FileNotFoundError that says so. tfds serves {'lr': uint8 RGB, 'hr': uint8 RGB}, the LR being
DIV2K's official MATLAB-bicubic downsampling; split "train" (800 images) is the train split,
"validation" (100 images) the test split.

Conventions of skimage_sr (ECBSR): LR and HR are each converted to the Y channel in 0..255
(Y = 16 + 65.481 R + 128.553 G + 24.966 B, R, G, B in [0, 1], not rounded); the HR is cropped
top-left to `scale` times the LR size. Train: every image is decoded once per epoch and gives
`repeat_patches` random aligned patches (HR side `patch_size`, default 32 * scale), with
hflip, vflip and transpose each p=0.5; the patches of SHUFFLE_IMAGES images are shuffled
together. Test: whole images (their sizes differ, so get_dataset serves one per batch).
"""

import tensorflow as tf

from repq.data import common, skimage_sr, tfds_sets
from repq.data.common import DatasetInfo

NAME = "div2k"
SCALES = (2, 3, 4, 8)  # tfds's bicubic configs
CONFIGS = {f"{NAME}/bicubic_x{scale}": scale for scale in SCALES}
TEST_SPLIT = "validation"
NUM_TRAIN, NUM_TEST = 800, 100
SHUFFLE_IMAGES = 16  # train: shuffle buffer of this many images' patches
SHUFFLE_TEST_IMAGES = 8  # test with shuffle=True: buffer of whole images (~15 MB each)


def matches(name):
    """True for `div2k` and `div2k/<config>` (a bad config is reported by config_name)."""
    return name == NAME or name.startswith(NAME + "/")


def config_name(name, scale):
    """`div2k` or `div2k/bicubic_xS` and get_dataset's scale -> the tfds config name."""
    if name == NAME:
        if scale not in SCALES:
            raise ValueError(f"{NAME}: scale must be one of {SCALES} (tfds's bicubic configs), "
                             f"got {scale}")
        return f"{NAME}/bicubic_x{scale}"
    if name not in CONFIGS:
        raise ValueError(f"Unknown DIV2K config {name!r}; use {NAME!r} (the factor is the scale "
                         f"argument) or one of {', '.join(CONFIGS)}")
    if CONFIGS[name] != scale:
        raise ValueError(f"{name} upscales by {CONFIGS[name]}, but scale={scale}; pass "
                         f"scale={CONFIGS[name]} (--model ..._x{CONFIGS[name]}) or use {NAME!r}")
    return name


def info(name, scale, image_size=None):
    """DatasetInfo of div2k at upscaling factor `scale`."""
    config_name(name, scale)
    skimage_sr.check_no_image_size(name, image_size)
    return DatasetInfo(name, "super_resolution", None, (None, None, 1), NUM_TRAIN, NUM_TEST, scale)


def _load(config, split, *, data_dir, shuffle, seed):
    """{'lr', 'hr'} uint8 RGB examples of the prepared tfds config."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(config, data_dir=data_dir)
    try:
        return builder.as_dataset(split="train" if split == "train" else TEST_SPLIT,
                                  shuffle_files=shuffle,
                                  read_config=tfds.ReadConfig(shuffle_seed=seed))
    except AssertionError as error:  # tfds: "could not find data in ..."
        raise tfds_sets.not_prepared(config, data_dir) from error


def y_pair(example, scale):
    """{'lr', 'hr'} uint8 RGB -> aligned (LR Y (h, w, 1), HR Y (h*scale, w*scale, 1)) float32."""
    lr, hr = example["lr"], example["hr"]
    h = tf.minimum(tf.shape(lr)[0], tf.shape(hr)[0] // scale)
    w = tf.minimum(tf.shape(lr)[1], tf.shape(hr)[1] // scale)
    return (skimage_sr.rgb_to_y_tf(lr[:h, :w])[..., None],
            skimage_sr.rgb_to_y_tf(hr[:h * scale, :w * scale])[..., None])


def random_patch(lr, hr, scale, patch_size, seed):
    """Aligned random (LR (p/s, p/s, 1), HR (p, p, 1)) patch of a whole image pair."""
    lr_patch = patch_size // scale
    h, w = tf.shape(lr)[0], tf.shape(lr)[1]
    check = tf.debugging.assert_greater_equal(
        tf.minimum(h, w), lr_patch,
        message=f"{NAME}: an LR image is smaller than the LR patch {lr_patch} "
                f"(patch_size={patch_size}, scale={scale})")
    with tf.control_dependencies([check]):
        top_seed, left_seed = common.split_seed(seed, 2)
        top = tf.random.stateless_uniform([], top_seed, 0, h - lr_patch + 1, tf.int32)
        left = tf.random.stateless_uniform([], left_seed, 0, w - lr_patch + 1, tf.int32)
    lr = tf.slice(lr, [top, left, 0], [lr_patch, lr_patch, 1])
    hr = tf.slice(hr, [top * scale, left * scale, 0], [patch_size, patch_size, 1])
    return lr, hr


def elements(name, split, *, data_dir, scale, patch_size, repeat_patches, image_size, shuffle,
             augment, seed):
    """Unbatched (LR float32 (h, w, 1), HR float32 (h*scale, w*scale, 1)) Y pairs in 0..255."""
    config = config_name(name, scale)
    skimage_sr.check_no_image_size(name, image_size)
    patch_size = patch_size or skimage_sr.LR_PATCH * scale
    repeat_patches = repeat_patches or skimage_sr.REPEAT_PATCHES
    if split == "train":  # the image sizes are checked per image, at run time
        skimage_sr.check_patch_size(name, scale, patch_size, patch_size)
    ds = _load(config, split, data_dir=data_dir, shuffle=shuffle, seed=seed)
    ds = ds.map(lambda example: y_pair(example, scale), num_parallel_calls=common.AUTOTUNE)
    if split == "test":
        return ds.shuffle(SHUFFLE_TEST_IMAGES, seed=seed) if shuffle else ds

    def patches(pair, image_seed):
        lr, hr = pair
        seeds = tf.random.experimental.stateless_split(image_seed, repeat_patches)

        def one(seed):
            patch_seed, flip_seed = common.split_seed(seed, 2)
            lr_patch, hr_patch = random_patch(lr, hr, scale, patch_size, patch_seed)
            return (skimage_sr.random_flips(lr_patch, hr_patch, flip_seed) if augment
                    else (lr_patch, hr_patch))

        return tf.data.Dataset.from_tensor_slices(seeds).map(one)

    ds = common.with_element_seeds(ds, seed).flat_map(patches)
    if shuffle:
        ds = ds.shuffle(SHUFFLE_IMAGES * repeat_patches, seed=seed, reshuffle_each_iteration=True)
    return ds
