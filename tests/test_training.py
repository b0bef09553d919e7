"""Training library: quantizer math against numpy, RepQ block reference, recipes, optimizers."""

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from repq import models
from repq.graph import all_layers
from repq.layers import RepVGGBlock
from repq.qat import quantize_model, quantized_layers
from repq.quantizers import ActivationQuantizer, WeightQuantizer, integer_range
from repq.training import (ConstantLR, GroupedAdam, GroupedSGD, SparseCrossEntropy, WarmupCosineDecay,
                           build_optimizer, fit_model)
from tests.conftest import moving_statistics, randomize_norms


def lsq_numpy(x, s, qmin, qmax):
    """LSQ grid with half-up rounding and clamp."""
    return np.clip(np.floor(x / s + 0.5), qmin, qmax) * s


def fixed_quantizer(quantizer, shape, step):
    quantizer.build(shape)
    quantizer.step.assign(step)
    quantizer.initialized.assign(1.0)
    return quantizer


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_quantizer_forward_matches_numpy(bits):
    rng = np.random.default_rng(bits)
    x = rng.normal(size=(3, 3, 4, 5)).astype("float32")
    step = rng.uniform(0.05, 0.3, 5).astype("float32")
    q = fixed_quantizer(WeightQuantizer(bits), x.shape, step)
    qmin, qmax = integer_range(bits, True)
    np.testing.assert_allclose(q(x, training=True).numpy(), lsq_numpy(x, step, qmin, qmax), atol=1e-6)


def test_activation_quantizer_forward_matches_numpy_unsigned():
    x = np.random.default_rng(0).uniform(-1, 3, size=(2, 4, 4, 3)).astype("float32")
    q = fixed_quantizer(ActivationQuantizer(4, signed=False), x.shape, 0.17)
    np.testing.assert_allclose(q(x, training=True).numpy(), lsq_numpy(x, 0.17, 0, 15), atol=1e-6)


def test_lsq_gradients_match_analytic_formulas():
    rng = np.random.default_rng(1)
    bits, shape = 3, (3, 3, 4, 5)
    x = rng.normal(size=shape).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    step = rng.uniform(0.2, 0.5, 5).astype("float32")
    q = fixed_quantizer(WeightQuantizer(bits), shape, step)
    qmin, qmax = integer_range(bits, True)
    xv = tf.Variable(x)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(upstream * q(xv, training=True))
    dx, ds = tape.gradient(loss, [xv, q.step])
    v = x / step
    inside = (np.floor(v + 0.5) >= qmin) & (np.floor(v + 0.5) <= qmax)
    np.testing.assert_allclose(dx.numpy(), upstream * inside, atol=1e-6)  # STE
    d_hat = np.where(inside, np.floor(v + 0.5) - v, np.where(v < 0, qmin, qmax))
    g = 1.0 / np.sqrt(3 * 3 * 4 * qmax)  # LSQ factor, N = elements per output channel
    np.testing.assert_allclose(ds.numpy(), g * (upstream * d_hat).sum(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


def numpy_conv_same(x, kernel):
    """Stride-1 conv with zero padding k//2: x (N,H,W,I), kernel (k,k,I,O)."""
    k = kernel.shape[0]
    p = k // 2
    xp = np.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],), np.float64)
    for i in range(k):
        for j in range(k):
            out += np.einsum("nhwi,io->nhwo", xp[:, i:i + h, j:j + w], kernel[i, j])
    return out


def test_qat_repvgg_block_inference_equals_numpy_merge_quantize_conv():
    inputs = keras.Input((8, 8, 4))
    fp = keras.Model(inputs, RepVGGBlock(4, name="block")(inputs))
    randomize_norms(fp, seed=3)
    qat = quantize_model(fp, 4, 4, range_quantizers=False)  # only the block: no 8-bit output rounding
    wrapper = quantized_layers(qat)[0]
    block = wrapper.layer
    randomize_norms(qat, seed=4)
    wrapper.input_quantizer.step.assign(0.03)
    wrapper.input_quantizer.initialized.assign(1.0)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")

    def fold(kernel, bn):
        std = np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        scale = bn.gamma.numpy() / std
        return kernel * scale, bn.beta.numpy() - bn.moving_mean.numpy() * scale

    k1 = np.zeros((3, 3, 4, 4), np.float32)
    k1[1, 1] = block.kernel_1x1.numpy()[0, 0]
    identity = np.zeros((3, 3, 4, 4), np.float32)
    identity[1, 1] = np.eye(4)
    parts = [fold(block.kernel_3x3.numpy(), block.norms[0]), fold(k1, block.norms[1]), fold(identity, block.norms[2])]
    kernel, bias = sum(p[0] for p in parts), sum(p[1] for p in parts)
    w_step = wrapper.weight_quantizer.step.numpy()
    qmin, qmax = integer_range(wrapper.weight_bits, True)
    kernel_q = lsq_numpy(kernel, w_step, qmin, qmax)
    a_min, a_max = integer_range(wrapper.act_bits, True)  # RepVGG: the first layer's input is 8-bit, signed
    x_q = lsq_numpy(x, 0.03, a_min, a_max)
    expected = np.maximum(numpy_conv_same(x_q, kernel_q) + bias, 0.0)
    np.testing.assert_allclose(qat(x, training=False).numpy(), expected, atol=1e-4)


TABLE_S1 = {  # model: (epochs, batch, loss, smoothing, optimizer, schedule, warmup, wd, fp, qat, merged8, s8, s4)
    "repvgg_a0": (120, 256, "ce", 0.1, "sgd", "warmup_cosine", 5, 1e-4, 0.1, 0.01, 0.001, 0.01, 0.01),
    "repvgg_b0": (120, 256, "ce", 0.1, "sgd", "warmup_cosine", 5, 1e-4, 0.1, 0.01, 0.001, 0.01, 0.01),
    "ac_resnet18": (100, 256, "ce", 0.0, "sgd", "cosine", 0, 1e-4, 0.1, 0.01, 0.001, 1e-4, 1e-3),
    "orepa_resnet18": (120, 256, "ce", 0.0, "sgd", "warmup_cosine", 5, 1e-4, 0.1, 0.01, 0.001, 1e-4, 1e-3),
    "ecbsr_m4c16": (1000, 32, "l1", 0.0, "adam", "constant", 0, 0.0, 5e-4, 5e-4, 5e-4, 5e-4, 5e-4),
}


@pytest.mark.parametrize("model", sorted(TABLE_S1))
def test_paper_recipes_equal_table_s1(model):
    variant = "div2k" if model.startswith("ecbsr") else "imagenet"
    c = importlib.import_module(f"repq.configs.{model}").get_config(variant)
    got = (c.fp_epochs, c.batch_size, c.loss, c.label_smoothing, c.optimizer, c.schedule, c.warmup_epochs,
           c.weight_decay, c.lr.fp, c.lr.qat, c.lr.merged8, c.lr.step_8bit, c.lr.step_4bit)
    assert got == TABLE_S1[model]
    assert c.qat_epochs == c.fp_epochs and c.momentum == 0.9


@pytest.mark.parametrize("model", ["repvgg_a0", "repvgg_b0", "ac_resnet18", "orepa_resnet18", "resnet18",
                                   "mobilenetv2", "ecbsr_m4c16"])
def test_embedded_recipes_load_and_unknown_variant_fails(model):
    module = importlib.import_module(f"repq.configs.{model}")
    assert module.get_config().data.name in ("mnist5k", "skimage_sr")
    with pytest.raises(ValueError, match="unknown recipe variant"):
        module.get_config("cifar100")


@pytest.mark.parametrize("model", ["repvgg_a0", "ac_resnet18", "orepa_resnet18", "mobilenetv2"])
def test_embedded_recipes_keep_table_s1_lr_ratios(model):
    """The embedded recipe swaps the optimizer and FP LR; QAT, merged 8-bit and step LRs keep Table S1's ratios."""
    module = importlib.import_module(f"repq.configs.{model}")
    paper, embedded = module.get_config("imagenet"), module.get_config()
    assert embedded.data.name == "mnist5k" and embedded.lr.fp != paper.lr.fp
    for key in ("qat", "merged8", "step_8bit", "step_4bit"):
        np.testing.assert_allclose(embedded.lr[key] / embedded.lr.fp, paper.lr[key] / paper.lr.fp, rtol=1e-12)
    assert embedded.warmup_epochs == min(paper.warmup_epochs, 1)


@pytest.mark.parametrize("args, fp_epochs, freeze, fp_lr", [
    ([], 30, None, 1e-3), (["--bnest"], 48, 1, 5e-4), (["--bnest", "--fp_epochs=5"], 5, 1, 5e-4),
    (["--bnest", "--freeze_bn_after=never"], 48, None, 5e-4), (["--freeze_bn_after=2"], 30, 2, 1e-3)])
def test_bnest_fp_epochs_apply_only_to_bnest_runs(args, fp_epochs, freeze, fp_lr):
    """A recipe's ``bnest_fp_epochs`` sets the FP stage of ``--bnest`` runs; ``--fp_epochs`` still wins.
    ``bnest_freeze_bn_after`` likewise sets ``freeze_bn_after`` of ``--bnest`` runs; ``--freeze_bn_after`` wins.
    ``bnest_fp_lr`` sets the FP LR of ``--bnest`` runs only; the QAT LR stays."""
    from absl import flags

    from repq.cli import train

    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["train.py", "--model=ac_resnet18", *args])
        recipe = train.load_recipe()
    finally:
        flags.FLAGS.unparse_flags()
    assert (recipe.fp_epochs, recipe.qat_epochs) == (fp_epochs, 6)
    assert recipe.freeze_bn_after == freeze
    assert recipe.lr.fp == pytest.approx(fp_lr) and recipe.lr.qat == pytest.approx(1e-4)
    assert importlib.import_module("repq.configs.repvgg_a0").get_config().bnest_fp_epochs is None
    assert "bnest_fp_lr" not in importlib.import_module("repq.configs.repvgg_a0").get_config()


def _variables():
    return (keras.Variable(np.array([1.0, -2.0], "float32"), name="kernel"),
            keras.Variable(np.array([0.5], "float32"), name="step"),
            keras.Variable(np.array([0.3], "float32"), name="bias"))


def test_sgd_step_size_lr_and_weight_decay_one_step():
    kernel, step, bias = _variables()
    opt = GroupedSGD(learning_rate=0.1, momentum=0.9, step_lr_multiplier=0.1, l2=0.01, no_decay=("step", "bias"))
    grads = [np.array([0.2, 0.4], "float32"), np.array([2.0], "float32"), np.array([1.0], "float32")]
    opt.apply(grads, [kernel, step, bias])
    np.testing.assert_allclose(kernel.numpy(), [1.0 - 0.1 * (0.2 + 0.01 * 1.0), -2.0 - 0.1 * (0.4 - 0.01 * 2.0)],
                               rtol=1e-6)
    np.testing.assert_allclose(step.numpy(), [0.5 - 0.01 * 2.0], rtol=1e-6)  # step LR 0.01, no decay
    np.testing.assert_allclose(bias.numpy(), [0.3 - 0.1 * 1.0], rtol=1e-6)


def test_adam_step_size_lr_is_a_learning_rate_not_a_gradient_scale():
    kernel, step, bias = _variables()
    opt = GroupedAdam(learning_rate=1e-2, epsilon=1e-8, step_lr_multiplier=0.01)
    opt.apply([np.array([0.2, 0.4], "float32"), np.array([2.0], "float32"), np.array([1.0], "float32")],
              [kernel, step, bias])
    # First Adam step moves by lr * g / (|g| + eps): the step size by 1e-4, the rest by 1e-2.
    np.testing.assert_allclose(step.numpy(), [0.5 - 1e-4], rtol=1e-5)
    np.testing.assert_allclose(kernel.numpy(), [1.0 - 1e-2, -2.0 - 1e-2], rtol=1e-5)


def test_build_optimizer_picks_stage_and_bit_width_lrs():
    recipe = importlib.import_module("repq.configs.ac_resnet18").get_config("imagenet")
    opt4 = build_optimizer(recipe, "qat", steps_per_epoch=10, weight_bits=4)
    opt8 = build_optimizer(recipe, "qat", steps_per_epoch=10, weight_bits=8)
    assert float(opt4.learning_rate) == pytest.approx(0.01)  # cosine at iteration 0
    assert opt4.step_lr_multiplier == pytest.approx(1e-3 / 0.01)
    assert opt8.step_lr_multiplier == pytest.approx(1e-4 / 0.01)
    assert float(build_optimizer(recipe, "merged8", 10).learning_rate) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="stage"):
        build_optimizer(recipe, "int8", 10)


def test_schedules_values_and_serialization():
    s = WarmupCosineDecay(1.0, total_steps=20, warmup_steps=5)
    assert float(s(0)) == pytest.approx(0.2) and float(s(4)) == pytest.approx(1.0)
    assert float(s(5)) == pytest.approx(1.0) and float(s(20)) == pytest.approx(0.0, abs=1e-7)
    assert float(s(12.5)) == pytest.approx(0.5, abs=1e-6)
    for schedule in (s, ConstantLR(3e-4)):
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
        assert clone.get_config() == schedule.get_config()
    assert float(ConstantLR(3e-4)(1000)) == pytest.approx(3e-4)


def test_label_smoothing_cross_entropy():
    logits = np.array([[2.0, 0.0, -1.0]], "float32")
    p = np.exp(logits) / np.exp(logits).sum()
    target = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    assert float(SparseCrossEntropy(0.1)(np.array([0]), logits)) == pytest.approx(-(target * np.log(p)).sum(), rel=1e-5)


def _tiny_recipe():
    recipe = importlib.import_module("repq.configs.repvgg_a0").get_config()
    recipe.fp_epochs = recipe.qat_epochs = 1
    recipe.steps_per_epoch = None
    recipe.warmup_epochs = 0
    return recipe


def _tiny_data(n=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def test_bnest_fp_and_qat_models_train_and_deploy_exactly(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = RepVGGBlock(8, norm_mode="bnest", name="b0")(inputs)
    x = RepVGGBlock(8, norm_mode="bnest", name="b1")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    fp = keras.Model(inputs, keras.layers.Dense(2)(x), name="repvgg_tiny")
    data = _tiny_data()
    recipe = _tiny_recipe()
    before = [v.numpy().copy() for v in fp.trainable_variables]
    history = fit_model(fp, data, data, recipe, "fp", verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.allclose(a, v.numpy()) for a, v in zip(before, fp.trainable_variables))
    qat = quantize_model(fp, 4, 4, bn="bnest")
    history = fit_model(qat, data, data, recipe, "qat", weight_bits=4, output_dir=str(tmp_path), verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert (tmp_path / "tensorboard" / "qat").is_dir()
    import repq
    xb = next(iter(data))[0]
    np.testing.assert_array_equal(repq.reparametrize(qat)(xb).numpy(), qat(xb, training=False).numpy())


def test_recipe_freeze_bn_after_freezes_the_qat_stage_only(tmp_path):
    """``freeze_bn_after=0``: the QAT stage never updates the moving statistics; None: it does."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(RepVGGBlock(8, name="b0")(inputs))
    fp = keras.Model(inputs, keras.layers.Dense(2)(x), name="repvgg_tiny")
    data, recipe = _tiny_data(), _tiny_recipe()
    recipe.freeze_bn_after = 0
    qat = quantize_model(fp, 4, 4)
    stats = moving_statistics(qat)
    fit_model(qat, data, data, recipe, "qat", weight_bits=4, verbose=0)
    for a, b in zip(stats, moving_statistics(qat)):
        np.testing.assert_array_equal(a, b)
    recipe.freeze_bn_after = None
    fit_model(qat, data, data, recipe, "qat", weight_bits=4, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(stats, moving_statistics(qat)))
    recipe.freeze_bn_after = 0  # the FP stage is not affected
    fp_stats = moving_statistics(fp)
    fit_model(fp, data, data, recipe, "fp", verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(fp_stats, moving_statistics(fp)))


@pytest.mark.parametrize("model", ["repvgg_a0", "repvgg_b0", "resnet18", "ac_resnet18", "orepa_resnet18",
                                   "mobilenetv2"])
def test_embedded_recipes_freeze_bnest_statistics_after_one_qat_epoch_and_table_s1_never(model):
    module = importlib.import_module(f"repq.configs.{model}")
    embedded, imagenet = module.get_config(), module.get_config("imagenet")
    assert (embedded.freeze_bn_after, embedded.bnest_freeze_bn_after) == (None, 1)
    assert (imagenet.freeze_bn_after, imagenet.bnest_freeze_bn_after) == (None, None)


def test_create_model_bnest_padding_aware_sets_every_bnest_block_and_survives_keras_files(tmp_path):
    from repq.layers.base import RepConvBlock

    model = models.create_model("resnet18", num_classes=10, input_shape=(32, 32, 3), norm_mode="bnest",
                                bnest_padding_aware=True)
    blocks = [layer for layer in all_layers(model) if isinstance(layer, RepConvBlock)]
    assert {b.norm_mode for b in blocks} == {"bn", "bnest"}  # ResNet-18 keeps BN in its last two convs
    assert all(b.bnest_padding_aware == (b.norm_mode == "bnest") for b in blocks)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert [b.bnest_padding_aware for b in all_layers(loaded) if isinstance(b, RepConvBlock)] == \
        [b.bnest_padding_aware for b in blocks]
    with pytest.raises(ValueError, match="has no BNEst block; pass norm_mode='bnest'"):
        models.create_model("resnet18", num_classes=10, input_shape=(32, 32, 3), bnest_padding_aware=True)


def test_quantize_model_sets_or_drops_the_padding_aware_estimate(tmp_path):
    """bn="bnest" with bnest_padding_aware=True turns it on in every BNEst block; bn="repq" on a padding-aware
    BNEst FP model drops it with the estimate (the QAT model saves and loads); other combinations are refused."""
    from repq.layers.base import RepConvBlock

    def blocks(model):
        return [layer for layer in all_layers(model) if isinstance(layer, RepConvBlock)]

    inputs = keras.Input((8, 8, 3))
    x = RepVGGBlock(8, name="b0")(inputs)
    fp = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(RepVGGBlock(8, name="b1")(x))))
    aware = quantize_model(fp, 4, 4, bn="bnest", bnest_padding_aware=True)
    assert [(b.norm_mode, b.bnest_padding_aware) for b in blocks(aware)] == [("bnest", True)] * 2
    for b in blocks(fp):  # an FP model trained with the padding-aware estimate, quantized with RepQ-BN
        b.norm_mode, b.bnest_padding_aware = "bnest", True
    repq_bn = quantize_model(fp, 4, 4, bn="repq")
    assert [(b.norm_mode, b.bnest_padding_aware) for b in blocks(repq_bn)] == [("bn", False)] * 2
    repq_bn.save(tmp_path / "qat.keras")
    keras.saving.load_model(tmp_path / "qat.keras")
    with pytest.raises(ValueError, match="bnest_padding_aware applies to BN estimation"):
        quantize_model(fp, 4, 4, bn="repq", bnest_padding_aware=True)


def test_create_model_unknown_name_is_clear():
    with pytest.raises(ValueError, match="unknown model 'repvgg_z9'"):
        models.create_model("repvgg_z9")
    with pytest.raises(ValueError, match="Invalid value for argument weight_bits.*Received: weight_bits=9"):
        quantize_model(models.create_model("ecbsr_m4c16"), 9, 4)
