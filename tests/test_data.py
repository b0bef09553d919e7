"""Datasets (mnist5k, skimage_sr, tfds via mocks, folders) and the PSNR metric."""

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
    lambda: data.dataset_info("div2k"),
    lambda: data.preprocess_images(np.zeros((1, 4, 4, 3)), "imagenet"),
])
def test_unknown_name_lists_known_datasets(call):
    with pytest.raises(ValueError, match="Unknown dataset") as error:
        call()
    for name in data.list_datasets():
        assert name in str(error.value)


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


def test_mnist5k_augmentation_translates_and_keeps_labels():
    plain = _first_batch(data.get_dataset("mnist5k", "train", 64, shuffle=False, augment=False)[0])
    moved = _first_batch(data.get_dataset("mnist5k", "train", 64, shuffle=False, augment=True)[0])
    np.testing.assert_array_equal(plain[1], moved[1])
    assert np.mean([not np.array_equal(p, m) for p, m in zip(plain[0], moved[0])]) > 0.5
    zero = plain[0].min()  # normalised black pixel
    padded = np.pad(plain[0], ((0, 0), (4, 4), (4, 4), (0, 0)), constant_values=zero)
    for image, target in zip(padded, moved[0]):  # every image is a translation by <= 4 px
        assert any(np.array_equal(image[dy:dy + 32, dx:dx + 32], target)
                   for dy in range(9) for dx in range(9))


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
                                        ("imagenet2012", "ILSVRC2012_img_train.tar")])
def test_unprepared_tfds_fails_fast_with_instructions(tmp_path, name, hint):
    with pytest.raises(FileNotFoundError, match="not prepared") as error:
        data.get_dataset(name, "train", 8, data_dir=str(tmp_path))
    assert hint in str(error.value) and str(tmp_path) in str(error.value)


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
