"""Model zoo: registry, exact reparametrization, parameter counts, serialization."""

import numpy as np
import pytest

import keras
from repq import models
import repq
from tests.conftest import randomize_norms, rel_max_error

TOL = 1e-4
# Every registered model, so a newly registered one is tested too (ECBSR: super-resolution).
CLASSIFIERS = [n for n in models.list_models() if not n.startswith("ecbsr")]
SR_MODELS = [n for n in models.list_models() if n.startswith("ecbsr_m4c16_x")]


def build(name, input_size, stem="auto"):
    if name.startswith("ecbsr"):
        return models.create_model(name, input_shape=(input_size, input_size, 1))
    kwargs = {"width_multiplier": 0.5} if name == "mobilenetv2" else {}
    return models.create_model(name, num_classes=10, input_shape=(input_size, input_size, 3),
                               stem=stem, **kwargs)


def prepare(model, x):
    model(x, training=True)  # a training forward moves BN statistics off their init
    randomize_norms(model)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_stride_layouts_end_at_the_documented_map_size(name):
    """At 32 px: "small" ends at 4x4 (stride 8), "half" at 2x2 (stride 16), "imagenet" at 1x1 (stride 32)."""
    for stem, size in (("small", 4), ("half", 2), ("imagenet", 1)):
        model = build(name, 32, stem)
        gap = next(layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
        assert tuple(gap.input.shape[1:3]) == (size, size), (stem, gap.input.shape)
    assert models.registry.stride_layout((32, 32, 3)) == "small"
    assert models.registry.stride_layout((224, 224, 3)) == "imagenet"
    with pytest.raises(ValueError, match="Invalid value for argument stem"):
        build(name, 32, "tiny")


def test_registry_lists_every_issue_model():
    names = set(models.list_models())
    assert set(CLASSIFIERS) | {"ecbsr_m4c16"} | set(SR_MODELS) <= names
    with pytest.raises(ValueError, match="repvgg_a0"):
        models.create_model("repvgg_a9")


@pytest.mark.parametrize("name", CLASSIFIERS + SR_MODELS)
@pytest.mark.parametrize("size,stem", [(32, "auto"), (64, "imagenet")], ids=["small", "imagenet_layout"])
def test_reparametrized_model_equals_multi_branch(name, size, stem):
    if name.startswith("ecbsr"):
        if stem == "imagenet":
            pytest.skip("ECBSR has one layout")
        model, batches = build(name, None), [(1, 9, 11, 1), (2, 16, 16, 1)]
    else:
        model, batches = build(name, size, stem), [(1, size, size, 3), (2, size, size, 3)]
    rng = np.random.default_rng(0)
    prepare(model, rng.normal(size=batches[1]).astype("float32"))
    deployed = repq.reparametrize(model)
    for shape in batches:
        x = rng.normal(size=shape).astype("float32") * (40 if name.startswith("ecbsr") else 1)
        assert rel_max_error(model(x, training=False), deployed(x, training=False)) < TOL


@pytest.mark.parametrize("name,size,out_hw", [("repvgg_a0", 32, 4), ("repvgg_a0", 224, 7),
                                              ("resnet18", 32, 4), ("resnet18", 224, 7),
                                              ("orepa_resnet18", 224, 7), ("ac_resnet18", 32, 4),
                                              ("mobilenetv2", 32, 4), ("mobilenetv2", 224, 7)])
def test_stride_pattern(name, size, out_hw):
    model = build(name, size)
    last_conv = [l for l in model.layers if isinstance(l, repq.layers.RepConvBlock)][-1]
    assert last_conv.output.shape[1:3] == (out_hw, out_hw)


def test_imagenet_shapes_build():
    for name in CLASSIFIERS:
        model = models.create_model(name, num_classes=1000, input_shape=(224, 224, 3))
        assert model.output_shape == (None, 1000)
    assert models.create_model("ecbsr_m4c16", scale=4).output_shape == (None, None, None, 1)


@pytest.mark.parametrize("name,published", [("repvgg_a0", 8.30e6), ("repvgg_b0", 14.33e6)])
def test_repvgg_deploy_parameter_counts_match_paper(name, published):
    deployed = repq.reparametrize(models.create_model(name, num_classes=1000, input_shape=(224, 224, 3)))
    assert abs(deployed.count_params() - published) / published < 0.01


@pytest.mark.parametrize("name", CLASSIFIERS + ["ecbsr_m4c16_x2"])
def test_model_keras_round_trip(name, tmp_path):
    model = build(name, 32 if not name.startswith("ecbsr") else None)
    shape = (2, 12, 12, 1) if name.startswith("ecbsr") else (2, 32, 32, 3)
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    prepare(model, x)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))


@pytest.mark.parametrize("name", ["repvgg_a0", "ecbsr_m4c16_x2"])
def test_deploy_model_exports_savedmodel(name, tmp_path):
    import tensorflow as tf
    model = build(name, 32 if name == "repvgg_a0" else 12)
    shape = (2, 32, 32, 3) if name == "repvgg_a0" else (2, 12, 12, 1)
    x = np.random.default_rng(2).normal(size=shape).astype("float32")
    prepare(model, x)
    deployed = repq.reparametrize(model)
    deployed.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    assert rel_max_error(model(x), served.serve(x)) < TOL
