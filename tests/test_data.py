"""Datasets (mnist5k, skimage_sr, tfds via mocks incl. div2k, folder, srfolder), PSNR metric."""

import hashlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from repq import data
from repq.data import common, mnist5k, skimage_sr
from repq.metrics import PSNR, psnr_y


def _first_batch(ds):
    x, y = next(iter(ds))
    return x.numpy(), y.numpy()


def _hashes(images):
    return {hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images}


# ---------------------------------------------------------------------------- names
@pytest.mark.parametrize("call", [
    lambda: data.get_dataset("mnist", "train", 8),
    lambda: data.dataset_info("set5"),
    lambda: data.preprocess_images(np.zeros((1, 4, 4, 3)), "imagenet"),
])
def test_unknown_name_lists_known_datasets(call):
    with pytest.raises(ValueError, match="Unknown dataset") as error:
        call()
    for name in data.list_datasets():
        assert name in str(error.value)
    assert {"div2k", "srfolder:<path>", "folder:<path>"} <= set(data.list_datasets())


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        data.get_dataset("mnist5k", "validation", 8)


# ---------------------------------------------------------------------------- mnist5k
def test_mnist5k_split_shapes_and_ranges():
    info = data.dataset_info("mnist5k")
    assert (info.task, info.num_classes, info.image_shape) == ("classification", 10, (32, 32, 3))
    assert (info.num_train, info.num_test) == (4000, 1000)
    x, y = _first_batch(data.get_dataset("mnist5k", "test", 1000)[0])
    assert x.shape == (1000, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y), [100] * 10)  # stratified
    np.testing.assert_allclose(x.min(), -0.1307 / 0.3081, rtol=1e-6)
    np.testing.assert_allclose(x.max(), (1 - 0.1307) / 0.3081, rtol=1e-6)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # gray replicated
    np.testing.assert_array_equal(x[:, :2], x.min())  # 2-pixel zero border
    train = data.get_dataset("mnist5k", "train", 4000, augment=False)[0]
    x_train, y_train = _first_batch(train)
    assert x_train.shape[0] == 4000 and set(np.unique(y_train)) == set(range(10))
    assert not _hashes(x_train) & _hashes(x)  # disjoint splits


def test_mnist5k_test_prefixes_span_the_classes():
    """Any first N test digits (--limit, --num_eval) are class-balanced, not all zeros."""
    _, y = _first_batch(data.get_dataset("mnist5k", "test", 1000)[0])
    for n in (10, 100, 256):
        counts = np.bincount(y[:n], minlength=10)
        assert counts.min() >= n // 10 and counts.max() <= -(-n // 10), (n, counts)
    _, y_limited = _first_batch(data.get_dataset("mnist5k", "test", 64, limit=20)[0])
    np.testing.assert_array_equal(np.bincount(y_limited, minlength=10), [2] * 10)


def test_mnist5k_deterministic_under_seed():
    a, b, c = (_first_batch(data.get_dataset("mnist5k", "train", 32, seed=seed)[0])
               for seed in (1, 1, 2))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    ds = data.get_dataset("mnist5k", "train", 32, seed=1)[0]
    assert not np.array_equal(_first_batch(ds)[0], _first_batch(ds)[0])  # new epoch, new draw


@pytest.mark.parametrize("degrees, zoom, tx, ty", [(0.0, 1.0, 0.0, 0.0), (10.0, 1.0, 0.0, 0.0),
                                                  (-7.5, 1.1, 2.5, -1.25), (4.0, 0.9, -3.0, 3.0)])
def test_affine_transform_matches_scipy(degrees, zoom, tx, ty):
    """Rotation/zoom/shift about the centre against scipy.ndimage (bilinear, zero fill), tolerance 1e-3 of 255."""
    from scipy import ndimage

    image = np.random.default_rng(1).integers(0, 256, (32, 28, 3)).astype(np.float32)
    got = common.affine_transform(image, degrees, zoom, tx, ty).numpy()
    a = np.deg2rad(degrees)
    # scipy maps output (row, col) to input matrix @ (row, col) + offset; rows are y, columns x
    matrix = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / zoom
    centre = (np.array(image.shape[:2]) - 1) / 2.0
    offset = centre - matrix @ (centre + np.array([ty, tx]))
    want = np.stack([ndimage.affine_transform(image[..., c], matrix, offset, order=1, mode="constant", cval=0.0)
                     for c in range(3)], -1)
    rows, cols = np.indices(image.shape[:2])
    source = np.tensordot(matrix, np.stack([rows, cols]), 1) + offset[:, None, None]
    inside = ((source[0] >= 1) & (source[0] <= image.shape[0] - 2) & (source[1] >= 1)
              & (source[1] <= image.shape[1] - 2))  # near the border the two fill conventions differ
    assert inside.mean() > 0.6
    np.testing.assert_allclose(got[inside], want[inside], atol=0.05)


def test_mnist5k_augmentation_distorts_and_keeps_labels():
    plain = _first_batch(data.get_dataset("mnist5k", "train", 64, shuffle=False, augment=False)[0])
    moved = _first_batch(data.get_dataset("mnist5k", "train", 64, shuffle=False, augment=True)[0])
    np.testing.assert_array_equal(plain[1], moved[1])
    assert np.mean([not np.allclose(p, m) for p, m in zip(plain[0], moved[0])]) > 0.9
    zero = plain[0].min()  # normalised black pixel
    ink = lambda x: np.sum(x - zero, axis=(1, 2, 3))  # noqa: E731
    ratio = ink(moved[0]) / ink(plain[0])  # a zoom of 1 +- 0.1 scales the ink by 0.81..1.21
    assert np.all((ratio > 0.75) & (ratio < 1.3)), ratio
    assert moved[0].min() >= zero - 1e-5 and moved[0].max() <= plain[0].max() + 1e-5


def test_preprocess_images_matches_the_pipeline():
    images, _ = mnist5k._arrays("test")
    x, _ = _first_batch(data.get_dataset("mnist5k", "test", 8)[0])
    np.testing.assert_array_equal(data.preprocess_images(images[:8], "mnist5k").numpy(), x)


def test_calibration_batches_are_unaugmented_train_images():
    batches = data.calibration_batches("mnist5k", 40, 16, seed=3)
    assert [b.shape[0] for b in batches] == [16, 16, 8]
    train, _ = mnist5k._arrays("train")
    reference = _hashes(data.preprocess_images(train, "mnist5k").numpy())
    assert _hashes(np.concatenate(batches)) <= reference


# ---------------------------------------------------------------------------- skimage_sr
@pytest.mark.parametrize("scale", [2, 4])
def test_skimage_sr_shapes_ranges_and_alignment(scale):
    ds, info = data.get_dataset("skimage_sr", "train", 8, scale=scale, repeat_patches=2)
    assert (info.task, info.image_shape, info.scale) == ("super_resolution", (None, None, 1), scale)
    assert ds.element_spec[0].shape[1:] == (32, 32, 1)
    assert ds.element_spec[1].shape[1:] == (32 * scale, 32 * scale, 1)
    lr, hr = map(np.concatenate, zip(*[(x.numpy(), y.numpy()) for x, y in ds]))
    assert len(lr) == 2 * len(skimage_sr.TRAIN_IMAGES)
    assert hr.min() >= 16 and hr.max() <= 235  # HR strictly in the Y range
    assert lr.min() >= 0 and lr.max() <= 255  # bicubic may overshoot a little
    for low, high in zip(lr, hr):  # the LR patch is the downsampled HR patch (interior)
        np.testing.assert_allclose(skimage_sr.downsample(high[..., 0], scale)[2:-2, 2:-2],
                                   low[2:-2, 2:-2, 0], atol=1e-3)
    test_lr, test_hr = _first_batch(data.get_dataset("skimage_sr", "test", 16, scale=scale)[0])
    assert test_hr.shape == (len(skimage_sr.TEST_IMAGES), 240, 240, 1)
    assert test_lr.shape == (len(skimage_sr.TEST_IMAGES), 240 // scale, 240 // scale, 1)


def test_skimage_sr_train_and_test_images_differ():
    assert not set(skimage_sr.TRAIN_IMAGES) & set(skimage_sr.TEST_IMAGES)
    train = _hashes(skimage_sr.load_y(n) for n in skimage_sr.TRAIN_IMAGES)
    test = _hashes(skimage_sr.load_y(n) for n in skimage_sr.TEST_IMAGES)
    assert len(train) == len(skimage_sr.TRAIN_IMAGES) and not train & test


def test_rgb_to_y_by_hand():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                     [128, 64, 32]]], np.uint8)
    expected = [16.0, 235.0, 81.481, 144.553, 40.966,
                16 + (65.481 * 128 + 128.553 * 64 + 24.966 * 32) / 255]
    np.testing.assert_allclose(skimage_sr.rgb_to_y(rgb)[0], expected, atol=1e-4)
    gray = np.array([[0, 255, 128]], np.uint8)
    np.testing.assert_allclose(skimage_sr.gray_to_y(gray)[0], [16, 235, 16 + 219 * 128 / 255],
                               atol=1e-4)


def test_skimage_sr_rejects_bad_patch_size():
    with pytest.raises(ValueError, match="multiple of scale"):
        data.get_dataset("skimage_sr", "train", 8, scale=4, patch_size=66)


# ---------------------------------------------------------------------------- tfds
def test_cifar10_pipeline_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        ds, info = data.get_dataset("cifar10", "train", 4, data_dir=str(tmp_path))
        x, y = _first_batch(ds)
        assert info.image_shape == (32, 32, 3) and info.num_classes == 10
        assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
        raw = tfds.load("cifar10", split="test", data_dir=str(tmp_path), download=False,
                        as_supervised=True).batch(6)
        images, labels = _first_batch(raw)
        x, y = _first_batch(data.get_dataset("cifar10", "test", 6, data_dir=str(tmp_path))[0])
    mean, std = common.IMAGENET_MEAN_STD
    np.testing.assert_allclose(x, (images / 255 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(data.preprocess_images(images, "cifar10").numpy(), x)


def test_imagenet_pipeline_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=2):
        for split in ("train", "test"):
            ds, info = data.get_dataset("imagenet2012", split, 2, image_size=48,
                                        data_dir=str(tmp_path))
            x, y = _first_batch(ds)
            assert x.shape == (2, 48, 48, 3) and info.num_classes == 1000
            assert np.all((y >= 0) & (y < 1000))


@pytest.mark.parametrize("name, hint", [("cifar10", "tfds build cifar10"),
                                        ("imagenet2012", "ILSVRC2012_img_train.tar"),
                                        ("div2k", "tfds build div2k/bicubic_x2")])
def test_unprepared_tfds_fails_fast_with_instructions(tmp_path, name, hint):
    with pytest.raises(FileNotFoundError, match="not prepared") as error:
        data.get_dataset(name, "train", 8, data_dir=str(tmp_path))
    assert hint in str(error.value) and str(tmp_path) in str(error.value)


# ---------------------------------------------------------------------------- div2k (tfds)
def _div2k_pairs(scale, split):
    """Raw DIV2K-like examples: random HR RGB, LR = its rounded s x s block means (a linear
    downsampling, so the LR Y is the block mean of the HR Y up to the rounding)."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    pairs = []
    for h, w in ((6, 7), (8, 5), (7, 9))[:3 if split == "train" else 2]:
        hr = rng.integers(0, 256, (h * scale + 1, w * scale, 3), np.uint8)  # one extra HR row
        blocks = hr[:h * scale].astype(np.float64).reshape(h, scale, w, scale, 3)
        pairs.append({"lr": blocks.mean((1, 3)).round().astype(np.uint8), "hr": hr})
    return pairs


def _block_mean(hr, scale):
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    return hr.reshape(h, scale, w, scale, *hr.shape[2:]).mean((1, 3))


@pytest.fixture
def mock_div2k():
    """tfds mocked to serve _div2k_pairs; yields the list of tfds configs asked for."""
    import tensorflow_datasets as tfds

    asked = []

    def as_dataset(self, split, **kwargs):
        scale = int(self.builder_config.name.rsplit("x", 1)[1])
        asked.append((f"{self.name}/{self.builder_config.name}", str(split)))
        pairs = _div2k_pairs(scale, str(split))
        spec = tf.TensorSpec((None, None, 3), tf.uint8)
        return tf.data.Dataset.from_generator(lambda: iter(pairs),
                                              output_signature={"lr": spec, "hr": spec})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        yield asked


@pytest.mark.parametrize("name, scale", [("div2k", 2), ("div2k", 4), ("div2k/bicubic_x2", 2)])
def test_div2k_with_mock_data(tmp_path, mock_div2k, name, scale):
    info = data.dataset_info(name, scale=scale)
    assert (info.task, info.image_shape, info.scale) == ("super_resolution", (None, None, 1), scale)
    assert (info.num_train, info.num_test) == (800, 100)
    patch = 4 * scale  # LR patch 4 fits in every 6x5 .. 8x9 LR image
    ds, _ = data.get_dataset(name, "train", 8, scale=scale, patch_size=patch, repeat_patches=5,
                             data_dir=str(tmp_path))
    assert mock_div2k[-1] == (f"div2k/bicubic_x{scale}", "train")
    assert ds.element_spec[0].shape[1:] == (4, 4, 1)
    assert ds.element_spec[1].shape[1:] == (patch, patch, 1)
    lr, hr = map(np.concatenate, zip(*[(x.numpy(), y.numpy()) for x, y in ds]))
    assert len(lr) == 3 * 5 and lr.dtype == hr.dtype == np.float32
    assert hr.min() >= 16 and hr.max() <= 235 and lr.min() >= 16 and lr.max() <= 235
    for low, high in zip(lr, hr):  # aligned (also when flipped): LR = block means of the HR
        np.testing.assert_allclose(_block_mean(high, scale), low, atol=0.5)
    assert len(_hashes(lr)) > 3  # several patches per image

    test, _ = data.get_dataset(name, "test", 16, scale=scale, data_dir=str(tmp_path))
    assert mock_div2k[-1] == (f"div2k/bicubic_x{scale}", "validation")
    served = [(x.numpy(), y.numpy()) for x, y in test]
    raw = _div2k_pairs(scale, "validation")
    assert len(served) == len(raw)  # whole images of different sizes: one per batch
    for (x, y), pair in zip(served, raw):
        h, w = pair["lr"].shape[:2]
        assert x.shape == (1, h, w, 1) and y.shape == (1, h * scale, w * scale, 1)
        np.testing.assert_allclose(x[0, ..., 0], skimage_sr.rgb_to_y(pair["lr"]), atol=1e-4)
        np.testing.assert_allclose(y[0, ..., 0], skimage_sr.rgb_to_y(pair["hr"][:h * scale]),
                                   atol=1e-4)  # the extra HR row is cropped away
    np.testing.assert_array_equal(data.preprocess_images(served[0][0], name).numpy(),
                                  served[0][0])


def test_div2k_deterministic_under_seed(tmp_path, mock_div2k):
    def first(seed):
        ds, _ = data.get_dataset("div2k", "train", 15, patch_size=8, repeat_patches=5, seed=seed,
                                 data_dir=str(tmp_path))
        return _first_batch(ds)[1]

    a, b, c = first(1), first(1), first(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_div2k_patch_larger_than_an_image_fails_with_its_sizes(tmp_path, mock_div2k):
    ds, _ = data.get_dataset("div2k", "train", 8, patch_size=40, data_dir=str(tmp_path))
    with pytest.raises(tf.errors.InvalidArgumentError, match="smaller than the LR patch 20"):
        next(iter(ds))


def test_rgb_to_y_tf_matches_numpy():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)
    np.testing.assert_allclose(skimage_sr.rgb_to_y_tf(rgb).numpy(), skimage_sr.rgb_to_y(rgb),
                               atol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda: data.dataset_info("div2k/bicubic_x4", scale=2), "upscales by 4, but scale=2"),
    (lambda: data.dataset_info("div2k/unknown_x2"), "Unknown DIV2K config"),
    (lambda: data.dataset_info("div2k", scale=5), "scale must be one of"),
    (lambda: data.dataset_info("div2k", image_size=64), "image_size=64 is not supported"),
])
def test_div2k_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_div2k_unprepared_error_names_the_config_and_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        data.get_dataset("div2k", "test", 1, scale=4, data_dir=str(tmp_path))
    message = str(error.value)
    assert "div2k/bicubic_x4 is not prepared in " + str(tmp_path) in message
    assert "tfds build div2k/bicubic_x4 --data_dir=DIR" in message and "network" in message


# ---------------------------------------------------------------------------- folder
def _write_pngs(directory, count, value):
    directory.mkdir(parents=True)
    for i in range(count):
        image = np.full((20, 24, 3), value + i, np.uint8)
        (directory / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())


def test_folder_skips_corrupt_files(tmp_path):
    _write_pngs(tmp_path / "cat", 5, 10)
    _write_pngs(tmp_path / "dog", 5, 200)
    (tmp_path / "cat" / "broken.png").write_bytes(b"not an image at all")
    good = (tmp_path / "dog" / "0.png").read_bytes()
    (tmp_path / "dog" / "truncated.png").write_bytes(good[:len(good) // 2])  # valid header
    name = f"folder:{tmp_path}"
    with pytest.warns(UserWarning, match="broken.png"):
        info = data.dataset_info(name, image_size=16)
    assert info.num_classes == 2 and info.image_shape == (16, 16, 3)
    assert info.num_train + info.num_test == 11  # the truncated file passes the header check
    served = []
    for split in ("train", "test"):
        for x, y in data.get_dataset(name, split, 4, image_size=16)[0]:
            assert x.shape[1:] == (16, 16, 3)
            served += list(zip(y.numpy(), x.numpy()[:, 0, 0, 0]))
    assert len(served) == 10  # the truncated file is dropped while reading
    mean, std = common.IMAGENET_MEAN_STD
    for label, pixel in served:  # cat images are dark, dog images bright
        assert (pixel * std[0] + mean[0] > 0.5) == (label == 1)


def test_folder_train_test_layout(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for label, cls in enumerate(("a", "b")):
            _write_pngs(tmp_path / split / cls, count, 50 * label)
    info = data.dataset_info(f"folder:{tmp_path}", image_size=8)
    assert (info.num_classes, info.num_train, info.num_test) == (2, 6, 4)
    x, y = _first_batch(data.get_dataset(f"folder:{tmp_path}", "test", 4, image_size=8)[0])
    assert x.shape == (4, 8, 8, 3) and sorted(y) == [0, 0, 1, 1]


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.dataset_info(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is empty.*one subfolder per class"):
        data.dataset_info(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="no class subfolders"):
        data.dataset_info(f"folder:{tmp_path / 'flat'}")


# ---------------------------------------------------------------------------- srfolder
def _write_sr_images(directory, shapes, seed=0):
    """Random uint8 PNGs of the given (H, W, C) shapes -> {file name: array}."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    images = {}
    for i, shape in enumerate(shapes):
        images[f"{i}.png"] = rng.integers(0, 256, shape, np.uint8)
        (directory / f"{i}.png").write_bytes(tf.io.encode_png(images[f"{i}.png"]).numpy())
    return images


def _expected_pair(image, scale):
    """skimage_sr's conversion of one uint8 image -> (LR Y, HR Y)."""
    y = skimage_sr.rgb_to_y(image[..., :3]) if image.shape[-1] >= 3 else skimage_sr.gray_to_y(
        image[..., 0])
    hr = skimage_sr.crop_to_multiple(y, scale)
    return skimage_sr.downsample(hr, scale), hr


@pytest.mark.parametrize("scale", [2, 4])
def test_srfolder_test_set_matches_skimage_sr_conversion(tmp_path, scale):
    images = _write_sr_images(tmp_path / "Set3", [(23, 26, 3), (20, 24, 3), (22, 21, 1),
                                                  (21, 22, 4)])
    name = f"srfolder:{tmp_path / 'Set3'}"
    info = data.dataset_info(name, scale=scale)
    assert (info.task, info.image_shape, info.scale) == ("super_resolution", (None, None, 1), scale)
    assert (info.num_train, info.num_test) == (0, 4)
    ds, _ = data.get_dataset(name, "test", 16, scale=scale)
    served = [(x.numpy(), y.numpy()) for x, y in ds]
    assert len(served) == 4  # whole images of different sizes: one per batch
    for (x, y), image in zip(served, images.values()):  # sorted file order
        lr, hr = _expected_pair(image, scale)
        h, w = image.shape[0] // scale, image.shape[1] // scale
        assert x.shape == (1, h, w, 1) and y.shape == (1, h * scale, w * scale, 1)
        np.testing.assert_array_equal(y[0, ..., 0], hr)
        np.testing.assert_allclose(x[0, ..., 0], lr, atol=1e-4)
        assert hr.min() >= 16 and hr.max() <= 235
    np.testing.assert_array_equal(data.preprocess_images(served[0][0], name).numpy(),
                                  served[0][0])
    with pytest.raises(ValueError, match="no train/ subfolder.*test set"):
        data.get_dataset(name, "train", 4, scale=scale)


def test_srfolder_train_test_layout(tmp_path):
    train = _write_sr_images(tmp_path / "train", [(24, 20, 3), (21, 30, 3)])
    _write_sr_images(tmp_path / "test", [(24, 20, 3)], seed=1)
    name = f"srfolder:{tmp_path}"
    info = data.dataset_info(name, scale=2)
    assert (info.num_train, info.num_test) == (2, 1)
    ds, _ = data.get_dataset(name, "train", 8, scale=2, patch_size=16, repeat_patches=3)
    assert ds.element_spec[0].shape[1:] == (8, 8, 1) and ds.element_spec[1].shape[1:] == (16, 16, 1)
    lr, hr = map(np.concatenate, zip(*[(x.numpy(), y.numpy()) for x, y in ds]))
    assert len(lr) == 2 * 3
    for low, high in zip(lr, hr):  # the LR patch is the downsampled HR patch (interior)
        np.testing.assert_allclose(skimage_sr.downsample(high[..., 0], 2)[2:-2, 2:-2],
                                   low[2:-2, 2:-2, 0], atol=1e-3)
    plain, _ = data.get_dataset(name, "train", 8, scale=2, patch_size=16, repeat_patches=3,
                                augment=False)
    train_hrs = [_expected_pair(image, 2)[1] for image in train.values()]
    for patch in np.concatenate([y.numpy() for _, y in plain])[..., 0]:  # windows of train HRs
        assert any(np.array_equal(hr[i:i + 16, j:j + 16], patch) for hr in train_hrs
                   for i in range(0, hr.shape[0] - 15, 2) for j in range(0, hr.shape[1] - 15, 2))
    batches = data.calibration_batches(name, 5, 4, scale=2, patch_size=16)
    assert [b.shape for b in batches] == [(4, 8, 8, 1), (1, 8, 8, 1)]
    with pytest.raises(ValueError, match="patch_size=32 must be a multiple of scale=2 and at "
                                         "most 20"):
        data.get_dataset(name, "train", 8, scale=2, patch_size=32)


def test_srfolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.dataset_info(f"srfolder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files.*it is empty"):
        data.dataset_info(f"srfolder:{tmp_path / 'empty'}")
    _write_sr_images(tmp_path / "nested" / "image_SRF_2", [(8, 8, 3)])
    with pytest.raises(ValueError, match="no image files directly in it.*'image_SRF_2'"):
        data.dataset_info(f"srfolder:{tmp_path / 'nested'}")
    _write_sr_images(tmp_path / "half" / "train", [(8, 8, 3)])
    with pytest.raises(ValueError, match="only one of train/ and test/"):
        data.dataset_info(f"srfolder:{tmp_path / 'half'}")
    _write_sr_images(tmp_path / "bad", [(8, 8, 3)])
    (tmp_path / "bad" / "notes.png").write_bytes(b"not an image at all")
    with pytest.warns(UserWarning, match="notes.png"):
        assert data.dataset_info(f"srfolder:{tmp_path / 'bad'}").num_test == 1
    good = (tmp_path / "bad" / "0.png").read_bytes()
    _write_sr_images(tmp_path / "truncated", [])
    (tmp_path / "truncated" / "cut.png").write_bytes(good[:len(good) // 2])  # valid header
    with pytest.raises(ValueError, match="Cannot decode .*cut.png"):
        data.get_dataset(f"srfolder:{tmp_path / 'truncated'}", "test", 1)
    with pytest.raises(ValueError, match="image_size=8 is not supported"):
        data.dataset_info(f"srfolder:{tmp_path / 'bad'}", image_size=8)
    with pytest.raises(ValueError, match="scale must be >= 2"):
        data.dataset_info(f"srfolder:{tmp_path / 'bad'}", scale=1)


# ---------------------------------------------------------------------------- PSNR
def _psnr_reference(sr, hr, scale):
    sr = np.clip(sr[:, scale:-scale, scale:-scale].astype(np.float64), 0, 255)
    hr = hr[:, scale:-scale, scale:-scale].astype(np.float64)
    return -10 * np.log10(np.mean(((sr - hr) / 255) ** 2, axis=(1, 2, 3)))


def test_psnr_y_matches_numpy_with_shave_and_clamp():
    rng = np.random.default_rng(0)
    hr = rng.uniform(16, 235, (3, 20, 20, 1))
    sr = hr + rng.normal(0, 8, hr.shape)
    sr[:, 8, 8] = 400.0  # clamped to 255
    sr[:, :2] = -1000.0  # shaved away at scale 2
    np.testing.assert_allclose(psnr_y(sr, hr, 2).numpy(), _psnr_reference(sr, hr, 2), atol=1e-3)
    assert np.isfinite(psnr_y(sr, hr, 2).numpy()).all()
    assert np.isinf(psnr_y(hr, hr, 2).numpy()).all()  # identical images: +inf, no cap


def test_psnr_metric_in_compile_and_serialization():
    rng = np.random.default_rng(1)
    lr = rng.uniform(16, 235, (4, 8, 8, 1)).astype(np.float32)
    hr = rng.uniform(16, 235, (4, 16, 16, 1)).astype(np.float32)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.UpSampling2D(2)])
    model.compile(loss="mae", metrics=[PSNR(2)])
    result = model.evaluate(lr, hr, batch_size=2, verbose=0, return_dict=True)
    expected = _psnr_reference(np.repeat(np.repeat(lr, 2, 1), 2, 2), hr, 2).mean()
    np.testing.assert_allclose(result["psnr"], expected, atol=1e-3)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(PSNR(4)))
    assert isinstance(clone, PSNR) and clone.scale == 4
