"""quantize_model's public configuration: QuantizeConfig, quantize_annotate_layer, register_quantizable."""

import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import repq
from repq.qat import LayerBits, PrecisionRule, QuantCustom, QuantizeConfig, QuantWrapper, quantized_layers
from repq.qat.deploy import QuantizedCustom

NO_RULE = PrecisionRule(first_input=False, first_weight=False, last_input=False, last_weight=False)


@keras.saving.register_keras_serializable(package="test_qat_config")
class TinyConv(keras.layers.Layer):
    """A user's conv-like layer (not a Conv2D): ``relu(conv3x3_same(x, kernel) + bias)``."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(3, 3, input_shape[-1], self.filters),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, x):
        return tiny_apply(self, x, self.kernel, self.bias)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def tiny_apply(layer, x, kernel, bias):
    return ops.relu(ops.conv(x, kernel, padding="same") + bias)


repq.register_quantizable(TinyConv, lambda layer: (layer.kernel, layer.bias), tiny_apply)


def toy_model(custom=False, annotate=None):
    """c1 -> relu -> c2 (or TinyConv) -> c3 -> bn -> GAP -> head; ``annotate`` maps name -> kwargs."""
    annotate = annotate or {}

    def make(layer):
        kwargs = annotate.get(layer.name)
        return layer if kwargs is None else repq.quantize_annotate_layer(layer, **kwargs)
    inputs = keras.Input((8, 8, 3))
    x = make(keras.layers.Conv2D(6, 3, padding="same", name="c1"))(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = make(TinyConv(5, name="c2") if custom else keras.layers.Conv2D(5, 3, padding="same", name="c2"))(x)
    x = make(keras.layers.Conv2D(4, 3, padding="same", name="c3"))(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = make(keras.layers.Dense(3, name="head"))(x)
    keras.utils.set_random_seed(0)
    return keras.Model(inputs, outputs, name="toy")


def images(n=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 3)).astype("float32")


def quantize(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the standalone BatchNormalization stays float
        qat = repq.quantize_model(model, 4, 4, **kwargs)
    qat(images(), training=True)  # activation step initialisation
    return qat


def bits(qat):
    return {l.name: (l.weight_bits, l.act_bits) for l in quantized_layers(qat)}


def assert_kernel_on_grid(wrapper, weight_bits):
    """The fake-quantized kernel is q * s per output channel with integer q in the signed b-bit range."""
    kernel, _ = wrapper.float_kernel_and_bias()
    fq = np.asarray(wrapper.weight_quantizer(kernel, training=False)).reshape(-1, kernel.shape[-1])
    step = np.asarray(wrapper.weight_quantizer.positive_step())
    q = np.round(fq / step)
    np.testing.assert_allclose(fq / step, q, atol=1e-4)
    assert q.min() >= -2 ** (weight_bits - 1) and q.max() <= 2 ** (weight_bits - 1) - 1
    assert all(len(np.unique(fq[:, c])) <= 2 ** weight_bits for c in range(fq.shape[1]))
    return q


def test_per_layer_bits_override_the_rule_and_set_the_integer_ranges():
    config = QuantizeConfig(layers={"c2": (3, 5), "head": 6})
    qat = quantize(toy_model(), config=config)
    # default rule (first and last layers 8-bit) for c1; the config overrides it for head
    assert bits(qat) == {"c1": (8, 8), "c2": (3, 5), "c3": (4, 4), "head": (6, 6)}
    c2 = qat.get_layer("c2")
    q = assert_kernel_on_grid(c2, 3)
    assert len(np.unique(q)) > 4  # a 3-bit kernel uses more than the 2-bit grid's values
    # c2's input follows a ReLU: unsigned 5-bit grid, 0..31 steps
    x = np.abs(images()[..., :1].repeat(6, axis=-1)) * 3.0
    xq = np.asarray(c2.input_quantizer(x, training=False)) / float(c2.input_quantizer.positive_step())
    np.testing.assert_allclose(xq, np.round(xq), atol=1e-4)
    assert np.round(xq).min() == 0 and np.round(xq).max() == 31
    assert_kernel_on_grid(qat.get_layer("head"), 6)


def test_without_config_nothing_changes():
    model = toy_model()
    x = images()
    plain, configured = quantize(model), quantize(model, config=QuantizeConfig())
    assert bits(plain) == bits(configured) == {"c1": (8, 8), "c2": (4, 4), "c3": (4, 4), "head": (8, 8)}
    np.testing.assert_array_equal(np.asarray(plain(x)), np.asarray(configured(x)))


def test_globs_and_regexes_later_entries_override_earlier_ones():
    config = QuantizeConfig(layers={"c*": 6, re.compile("c[23]"): LayerBits(act_bits=3)})
    assert bits(quantize(toy_model(), rule=NO_RULE, config=config)) == {
        "c1": (6, 6), "c2": (6, 3), "c3": (6, 3), "head": (4, 4)}
    # a regex must match the whole name; a dict config is accepted too
    config = dict(layers={"*": 5}, exclude=[])
    assert set(bits(quantize(toy_model(), rule=NO_RULE, config=config)).values()) == {(5, 5)}


def test_excluded_layers_stay_float_and_are_named_in_the_warning():
    fp = toy_model()
    with pytest.warns(UserWarning, match=r"1 layer\(s\) with weights in float: c3 \(excluded\)"):
        qat = repq.quantize_model(fp, 4, 4, rule=NO_RULE, config=QuantizeConfig(layers={"*": 6}, exclude="c3"))
    assert type(qat.get_layer("c3")) is keras.layers.Conv2D
    assert sorted(bits(qat)) == ["c1", "c2", "head"]
    c3, bn = fp.get_layer("c3"), fp.get_layer("bn")  # float, with the BN after it folded in (repq.qat.prepare)
    scale = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    np.testing.assert_allclose(qat.get_layer("c3").kernel.numpy(), c3.kernel.numpy() * scale, rtol=1e-6)


def test_the_rule_applies_to_the_first_layer_left_quantized():
    qat = quantize(toy_model(), config=QuantizeConfig(exclude=["c1"]))
    assert bits(qat) == {"c2": (8, 8), "c3": (4, 4), "head": (8, 8)}


@pytest.mark.parametrize("config, match", [
    (QuantizeConfig(layers={"nope": 4}), r"QuantizeConfig.layers names 'nope', which matches no layer"),
    (QuantizeConfig(exclude=["conv*"]), r"QuantizeConfig.exclude names 'conv\*', which matches no layer"),
    (QuantizeConfig(layers={re.compile("c"): 4}), r"re.compile\('c'\), which matches no layer"),
    (QuantizeConfig(layers={"bn": 4}), r"'bn', which matches only layers folded into the conv or dense before "
                                       r"them \(bn\)"),
    (QuantizeConfig(layers={"gap": 4}), r"'gap', which matches only layers that cannot be quantized \(gap\)"),
    ("c1", r"Invalid value for argument config\. Expected a repq.QuantizeConfig"),
    (dict(layer={"c1": 4}), r"Unknown keys \['layer'\]"),
])
def test_config_errors_name_the_culprit(config, match):
    with pytest.raises((ValueError, TypeError), match=match):
        repq.quantize_model(toy_model(), config=config)


@pytest.mark.parametrize("entry, match", [
    (16, r"Invalid value for argument weight_bits\. Expected an integer in \[2, 8\]\. Received: weight_bits=16"),
    ((4, 1), r"argument act_bits\. .* Received: act_bits=1"),
    ("8", r"Invalid value for argument layers\['c1'\]\. Expected an integer"),
])
def test_bad_bits_in_a_config_are_keras_style_errors(entry, match):
    with pytest.raises(ValueError, match=match):
        QuantizeConfig(layers={"c1": entry})


def test_annotations_are_picked_up_and_the_config_overrides_them():
    annotate = dict(c2=dict(weight_bits=3), c3=dict(exclude=True))
    with pytest.warns(UserWarning, match=r"c3 \(excluded\)"):
        qat = repq.quantize_model(toy_model(annotate=annotate), 4, 4, rule=NO_RULE)
    assert bits(qat) == {"c1": (4, 4), "c2": (3, 4), "head": (4, 4)}
    qat = quantize(toy_model(annotate=annotate), rule=NO_RULE, config=QuantizeConfig(layers={"c2": LayerBits(5)}))
    assert bits(qat)["c2"] == (5, 4)


def test_annotating_a_layer_that_cannot_be_quantized_is_an_error():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = repq.quantize_annotate_layer(keras.layers.LayerNormalization(name="ln"), weight_bits=4)(x)
    with pytest.raises(ValueError, match=r"layer 'ln' is annotated .* LayerNormalization cannot be quantized"):
        repq.quantize_model(keras.Model(inputs, x))
    with pytest.raises(ValueError, match="An excluded layer has no bit widths"):
        repq.quantize_annotate_layer(keras.layers.Dense(2), weight_bits=4, exclude=True)


def reference_tiny(qat, x):
    """QAT TinyConv c2 computed independently in numpy/TF from its float weights and steps."""
    c2 = qat.get_layer("c2")
    kernel, bias = (np.asarray(v) for v in (c2.layer.kernel, c2.layer.bias))
    s_w = np.asarray(c2.weight_quantizer.positive_step())
    s_x = float(c2.input_quantizer.positive_step())
    k_q = np.clip(np.floor(kernel / s_w + 0.5), -8, 7) * s_w
    x_q = np.clip(np.floor(x / s_x + 0.5), 0, 15) * s_x  # after the ReLU: unsigned 4-bit
    b_q = np.floor(bias / (s_x * s_w) + 0.5) * (s_x * s_w)
    return np.maximum(tf.nn.conv2d(x_q, k_q, 1, "SAME").numpy() + b_q, 0)


def test_a_registered_custom_layer_quantizes_trains_and_deploys(tmp_path):
    qat = quantize(toy_model(custom=True), rule=NO_RULE)
    c2 = qat.get_layer("c2")
    assert isinstance(c2, QuantCustom) and (c2.weight_bits, c2.act_bits, c2.input_signed) == (4, 4, False)
    assert_kernel_on_grid(c2, 4)

    x, y = images(8, seed=1), np.arange(8) % 3
    optimizer = keras.optimizers.SGD(0.1)
    kernel_before = np.asarray(c2.layer.kernel).copy()
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, qat(x, training=True), from_logits=True)
    grads = tape.gradient(loss, qat.trainable_variables)
    grad = dict(zip([id(v) for v in qat.trainable_variables], grads))[id(c2.layer.kernel)]
    assert grad is not None and np.all(np.isfinite(grad)) and np.any(np.asarray(grad) != 0)
    optimizer.apply(grads, qat.trainable_variables)
    assert np.any(np.asarray(c2.layer.kernel) != kernel_before)

    # the QAT layer computes the independent reference on a non-negative (post-ReLU) input
    z = np.maximum(np.random.default_rng(2).normal(size=(2, 8, 8, 6)), 0).astype("float32")
    np.testing.assert_allclose(np.asarray(c2(z, training=False)), reference_tiny(qat, z), atol=1e-5)

    deploy = repq.reparametrize(qat)
    assert isinstance(deploy.get_layer("c2"), QuantizedCustom)
    np.testing.assert_array_equal(np.asarray(deploy(x)), np.asarray(qat(x, training=False)))
    path = str(tmp_path / "deploy.keras")
    deploy.save(path)
    np.testing.assert_array_equal(np.asarray(keras.models.load_model(path)(x)), np.asarray(deploy(x)))


def test_model_quantized_with_a_config_round_trips_through_keras(tmp_path):
    config = QuantizeConfig(layers={"c2": (3, 5), "head": 6}, exclude=["c3"])
    with pytest.warns(UserWarning, match="excluded"):
        qat = repq.quantize_model(toy_model(custom=True), 4, 4, config=config)
    x = images()
    qat(x, training=True)
    path = str(tmp_path / "qat.keras")
    qat.save(path)
    loaded = keras.models.load_model(path)
    assert bits(loaded) == bits(qat) == {"c1": (8, 8), "c2": (3, 5), "head": (6, 6)}
    assert isinstance(loaded.get_layer("c2"), QuantCustom) and not isinstance(loaded.get_layer("c3"), QuantWrapper)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(qat(x)))


def test_register_quantizable_rejects_what_it_cannot_use():
    with pytest.raises(TypeError, match="argument layer_cls"):
        repq.register_quantizable(int, lambda l: None, lambda *a: None)
    with pytest.raises(ValueError, match="Conv2D is quantized by repq already"):
        repq.register_quantizable(keras.layers.Conv2D, lambda l: None, lambda *a: None)
    with pytest.raises(TypeError, match="argument apply"):
        repq.register_quantizable(TinyConv, lambda l: None, None)


RECIPE = '''
import ml_collections
from repq.configs import ecbsr_m4c16


def get_config():
    config = ecbsr_m4c16.get_config()
    config.quantize = ml_collections.ConfigDict(dict(layers={LAYERS}, exclude=[]))
    return config
'''


def test_the_recipe_quantize_field_reaches_quantize_model(capsys, tmp_path, monkeypatch):
    import repq.qat
    import repq.training
    from repq import models
    from repq.training import SimulatedCrash
    from tests.test_hostile_inputs import run_train

    def stop(*args, **kwargs):
        raise SimulatedCrash("stopped by the test where training would start")
    made = []

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]
    real = repq.qat.quantize_model
    monkeypatch.setattr(repq.qat, "quantize_model", spy)
    monkeypatch.setattr(repq.training, "fit_model", stop)
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE.replace("{LAYERS}", '{"ecb_body*": [6, 5], "ecb_tail": 3}'))
    fp = str(tmp_path / "fp.keras")
    models.create_model("ecbsr_m4c16", scale=2).save(fp)
    code, err = run_train(capsys, "--model=ecbsr_m4c16", "--limit=2", f"--fp_checkpoint={fp}", f"--config={recipe}",
                          f"--output_dir={tmp_path / 'run'}")
    assert code == 1 and "stopped by the test" in err, err[-2000:]
    # ECBSR's rule keeps the first and last layers 8-bit; the recipe overrides the last one
    assert bits(made[0]) == {"ecb_head": (8, 8), **{f"ecb_body{i}": (6, 5) for i in range(4)}, "ecb_tail": (3, 3)}

    # a pattern naming no layer fails before FP training, as a one-line usage error
    recipe.write_text(RECIPE.replace("{LAYERS}", '{"ecb_neck": 6}'))
    code, err = run_train(capsys, "--model=ecbsr_m4c16", "--limit=2", f"--config={recipe}",
                          f"--output_dir={tmp_path / 'run2'}")
    assert code == 2 and "recipe field quantize: QuantizeConfig.layers names 'ecb_neck'" in err, err[-2000:]
    assert "stopped by the test" not in err
