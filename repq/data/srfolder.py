"""srfolder:<path>: super-resolution on the user's HR images (Set5, Set14, B100, Urban100, ...).

Layout: HR images (PNG/JPEG/BMP/GIF) directly in `<path>` form a test set (benchmark sets
are test sets; asking for its train split raises ValueError), or `<path>/train/` and
`<path>/test/` hold the HR images of each split. Only the files directly in a folder are
read (not subfolders: benchmark archives often keep LR versions in subfolders), in sorted
order. A file with an image extension whose first bytes are not an image signature is
skipped with a Python warning (as `folder:` does); one that fails to decode raises
ValueError naming it.

Conventions of skimage_sr, with its helpers: each HR image -> Y channel in 0..255 (RGB:
Y = 16 + 65.481 R + 128.553 G + 24.966 B with R, G, B in [0, 1]; gray: 16 + 219 gray / 255;
an alpha channel is dropped), cropped top-left to a multiple of `scale`; LR = bicubic
downsampling of that Y (tf.image.resize, antialias, float). The images of a split are
decoded once per process and kept in memory as float32 Y (HR + LR: about 5 bytes per HR
pixel at x2): fine for benchmark sets and small training sets; serve DIV2K with `div2k`.
Train: random aligned patches (HR side `patch_size`, default 32 * scale), `repeat_patches`
per image per epoch, hflip, vflip and transpose each p=0.5. Test: whole images (their sizes
differ, so get_dataset serves one per batch).
"""

import dataclasses
import functools
import os
import warnings

import tensorflow as tf

from repq.data import folder, skimage_sr
from repq.data.common import DatasetInfo

PREFIX = "srfolder:"
LAYOUT = ("Expected HR images (*.png|jpg|bmp|...) directly in the folder (served as the test "
          "split), or train/ and test/ subfolders holding them.")


@dataclasses.dataclass(frozen=True)
class Listing:
    """Sorted image paths of both splits (train is empty for a test-only folder)."""

    train: tuple
    test: tuple


def root_of(name):
    """`srfolder:<path>` -> absolute path."""
    return os.path.abspath(os.path.expanduser(name[len(PREFIX):]))


def _image_files(directory):
    """Sorted image paths directly in `directory`; ValueError when there are none."""
    entries = sorted(os.listdir(directory))
    found = [os.path.join(directory, e) for e in entries
             if e.lower().endswith(folder.IMAGE_EXTENSIONS)
             and os.path.isfile(os.path.join(directory, e))]
    files = [path for path in found if folder._is_image(path)]
    rejected = sorted(set(found) - set(files))
    if rejected:
        warnings.warn(f"Skipping {len(rejected)} file(s) that are not PNG/JPEG/GIF/BMP images: "
                      f"{', '.join(rejected[:5])}{' ...' if len(rejected) > 5 else ''}",
                      stacklevel=3)
    if not files:
        seen = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ValueError(f"Dataset folder {directory} has no image files directly in it "
                         f"({', '.join(folder.IMAGE_EXTENSIONS)}; found "
                         f"{seen or 'nothing: it is empty'}). {LAYOUT}")
    return tuple(files)


@functools.lru_cache(maxsize=None)
def scan(root):
    """List and check the images under `root` once per process -> Listing."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Dataset folder {root} does not exist or is not a directory; "
                                f"pass srfolder:/path/to/HR. {LAYOUT}")
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    if not (os.path.isdir(train_dir) or os.path.isdir(test_dir)):
        return Listing((), _image_files(root))
    if not (os.path.isdir(train_dir) and os.path.isdir(test_dir)):
        raise ValueError(f"Dataset folder {root} has only one of train/ and test/. {LAYOUT}")
    return Listing(_image_files(train_dir), _image_files(test_dir))


def info(name, scale, image_size=None):
    """DatasetInfo of `srfolder:<path>` at upscaling factor `scale` (counts images)."""
    skimage_sr.check_scale(name, scale)
    skimage_sr.check_no_image_size(name, image_size)
    listing = scan(root_of(name))
    return DatasetInfo(name, "super_resolution", None, (None, None, 1), len(listing.train),
                       len(listing.test), scale)


def load_y(path):
    """float32 (H, W) Y channel of the image file at `path` (alpha dropped)."""
    try:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        raise ValueError(f"Cannot decode {path} ({error.message.strip()}); fix or remove "
                         "it") from error
    # uint8 (16-bit PNGs are scaled to 8 bits); 1 to 4 channels
    return (skimage_sr.rgb_to_y(image[..., :3]) if image.shape[-1] >= 3
            else skimage_sr.gray_to_y(image[..., 0]))


@functools.lru_cache(maxsize=None)
def _arrays(paths, scale):
    """skimage_sr.flatten of the cropped Y images at `paths`."""
    hrs = []
    for path in paths:
        hr = skimage_sr.crop_to_multiple(load_y(path), scale)
        if min(hr.shape) < scale:
            raise ValueError(f"{path} is smaller than the scale {scale}")
        hrs.append(hr)
    return skimage_sr.flatten(hrs, scale)


def elements(name, split, *, scale, patch_size, repeat_patches, image_size, shuffle, augment,
             seed):
    """Unbatched (LR float32 (h, w, 1), HR float32 (h*scale, w*scale, 1)) Y pairs in 0..255."""
    info(name, scale, image_size)
    root = root_of(name)
    paths = getattr(scan(root), split)
    if not paths:
        raise ValueError(f"Dataset folder {root} has no train/ subfolder: a folder of HR images "
                         "is a test set (Set5/Set14/B100/Urban100); put training images into "
                         f"{os.path.join(root, 'train')}/ and test images into "
                         f"{os.path.join(root, 'test')}/ to train on it.")
    arrays = _arrays(paths, scale)
    if split == "test":
        ds = tf.data.Dataset.range(len(paths))
        if shuffle:
            ds = ds.shuffle(len(paths), seed=seed)
        return ds.map(skimage_sr.image_getter(arrays, scale))
    patch_size = patch_size or skimage_sr.LR_PATCH * scale
    smallest = int(arrays[-1].min()) * scale
    skimage_sr.check_patch_size(name, scale, patch_size, smallest)
    return skimage_sr.patch_elements(arrays, scale=scale, patch_size=patch_size,
                                     repeat_patches=repeat_patches or skimage_sr.REPEAT_PATCHES,
                                     shuffle=shuffle, augment=augment, seed=seed)
