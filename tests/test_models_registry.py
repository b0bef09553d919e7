"""The model registry: each zoo model's ModelDefaults, found by the recorded registry name, never by model.name."""

import dataclasses
import warnings

import numpy as np
import pytest

import keras
import repq
from repq import models
from repq.models import registry
from repq.ptq import quantize_ptq
from repq.qat import PrecisionRule, QuantRepConv, quantize_model, quantized_layers

RESNET_KEEP_BN = ("stage4_block1_conv1", "stage4_block1_conv2")
FIRST_INPUT_ONLY = PrecisionRule(first_input=True, first_weight=False, last_input=False, last_weight=False)
FIRST_ONLY = PrecisionRule(first_input=True, first_weight=True, last_input=False, last_weight=False)
FIRST_AND_LAST = PrecisionRule()
# What each zoo model was quantized with when these settings were looked up by model name:
# (precision rule, keep-BN layers, MRECG k (None: units // 5), AdaRound λ, SR scale).
EXPECTED = {
    "repvgg_a0": (FIRST_INPUT_ONLY, (), None, 0.01, None),
    "repvgg_b0": (FIRST_INPUT_ONLY, (), None, 0.01, None),
    "resnet18": (FIRST_AND_LAST, RESNET_KEEP_BN, 2, 0.01, None),
    "ac_resnet18": (FIRST_ONLY, RESNET_KEEP_BN, None, 0.01, None),
    "orepa_resnet18": (FIRST_AND_LAST, RESNET_KEEP_BN, None, 0.01, None),
    "mobilenetv2": (FIRST_AND_LAST, (), 7, 0.1, None),
    "ecbsr_m4c16": (FIRST_AND_LAST, (), None, 0.01, 2),
    "ecbsr_m4c16_x2": (FIRST_AND_LAST, (), None, 0.01, 2),
    "ecbsr_m4c16_x4": (FIRST_AND_LAST, (), None, 0.01, 4),
}


def small(name, **kwargs):
    if name.startswith("ecbsr"):
        return models.create_model(name, input_shape=(12, 12, 1), **kwargs)
    if name == "mobilenetv2":
        kwargs.setdefault("width_multiplier", 0.35)
    return models.create_model(name, num_classes=10, input_shape=(16, 16, 3), **kwargs)


def plain_net(name):
    """A user model (not from the zoo) called ``name``."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x), name=name)


def bits(qat):
    return [(l.weight_bits, l.act_bits) for l in quantized_layers(qat)]


def test_every_zoo_model_is_in_the_table():
    assert sorted(EXPECTED) == models.list_models()


@pytest.mark.parametrize("name", models.list_models())
def test_zoo_defaults_are_the_name_lookups_they_replace(name):
    defaults = models.model_defaults(name)
    got = (defaults.precision_rule, defaults.keep_bn, defaults.mrecg_topk, defaults.adaround_lambda,
           defaults.sr_scale)
    assert got == EXPECTED[name]
    model = small(name)
    assert models.registry_name(model) == name and models.model_defaults(model) == defaults
    if defaults.sr_scale is not None:  # train.py builds SR models with no scale argument
        assert model.compute_output_shape((1, 12, 12, 1))[1] == 12 * defaults.sr_scale


def test_a_renamed_zoo_model_is_quantized_as_before():
    original, renamed = small("repvgg_a0"), small("repvgg_a0")
    renamed.name = "my_net"
    assert bits(quantize_model(renamed, 4, 4)) == bits(quantize_model(original, 4, 4))
    assert bits(quantize_model(renamed, 4, 4))[0] == (4, 8)  # RepVGG: only the first input 8-bit

    resnet = small("resnet18")
    resnet.name = "repvgg_a0"  # even the name of another zoo model changes nothing
    modes = {l.name: l.layer.norm_mode for l in quantized_layers(quantize_model(resnet, 4, 4, bn="bnest"))
             if isinstance(l, QuantRepConv)}
    assert [n for n, mode in modes.items() if mode == "bn"] == list(RESNET_KEEP_BN)

    mobilenet = small("mobilenetv2")
    mobilenet.name = "net"
    x = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")
    _, report = quantize_ptq(mobilenet, x, "rtn", verbose=0)
    assert report["reg_lambda"] == 0.1


@pytest.mark.parametrize("name", ["repvgg_custom", "mobilenetv2_1", "my_resnet18"])
def test_a_user_model_gets_the_generic_defaults_whatever_its_name(name):
    model = plain_net(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert models.model_defaults(model) == models.GENERIC_DEFAULTS
        assert bits(quantize_model(model, 4, 4)) == [(8, 8), (8, 8)]
    assert models.GENERIC_DEFAULTS == models.ModelDefaults(PrecisionRule(), (), None, 0.01, None)


def test_a_model_with_a_zoo_name_but_no_record_warns_and_can_be_tagged(tmp_path):
    path = str(tmp_path / "fp.keras")
    small("repvgg_a0").save(path)
    loaded = keras.saving.load_model(path)
    assert models.registry_name(loaded) is None
    with pytest.warns(UserWarning, match=r"set_registry_name\(model, 'repvgg_a0'\)"):
        assert models.model_defaults(loaded) == models.GENERIC_DEFAULTS
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        quantize_model(loaded, 4, 4, rule=PrecisionRule())  # nothing left to look up: no warning
    assert models.set_registry_name(loaded, "repvgg_a0") is loaded
    assert bits(quantize_model(loaded, 4, 4))[0] == (4, 8)
    with pytest.raises(ValueError, match="unknown model 'repvgg_z9'"):
        models.set_registry_name(loaded, "repvgg_z9")


def test_the_deploy_model_keeps_the_registry_name():
    deployed = repq.reparametrize(small("repvgg_a0"))
    assert models.registry_name(deployed) == "repvgg_a0"
    assert bits(quantize_model(deployed, 4, 4))[0] == (4, 8)


def test_register_model_refuses_a_duplicate_name(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    before = dict(registry._MODELS)

    def resnet18(**kwargs):
        return plain_net("resnet18")

    with pytest.raises(ValueError, match="'resnet18' is already registered .*repq.models.resnet.resnet18"):
        models.register_model(resnet18)
    with pytest.raises(ValueError, match="already registered"):
        models.register_model(defaults=models.ModelDefaults())(resnet18)
    assert registry._MODELS == before


def test_register_model_with_defaults(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    defaults = models.ModelDefaults(adaround_lambda=0.05, mrecg_topk=3)

    @models.register_model(defaults=defaults)
    def tiny_net(**kwargs):
        return plain_net("tiny")

    assert models.model_defaults(models.create_model("tiny_net")) is defaults
    with pytest.raises(TypeError, match="Expected a ModelDefaults"):
        models.register_model(defaults={"adaround_lambda": 0.05})
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.adaround_lambda = 0.1
