"""Rep blocks: exact merge, gradients, BN estimation and serialization."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras
import repq
from repq.layers import (ACBlock, ConvBN, ECBlock, OREPABlock, OREPALargeConv, PaddedConv2D,
                         RepVGGBlock)
from repq.layers.norm_stats import estimate_output_moments
from repq.layers.orepa import frequency_prior
from repq.graph import all_layers
from tests.conftest import randomize_norms, rel_max_error

TOL = 1e-4  # max abs error relative to the output scale

# (name, factory, input channels): stride 1/2, channel changes, groups, identities.
BLOCKS = [
    ("repvgg_identity", lambda: RepVGGBlock(8), 8),
    ("repvgg_stride2_widen", lambda: RepVGGBlock(12, strides=2), 8),
    ("repvgg_groups", lambda: RepVGGBlock(8, groups=4), 8),
    ("acb_stride1", lambda: ACBlock(6, activation="relu"), 4),
    ("acb_stride2", lambda: ACBlock(8, strides=2), 4),
    ("acb_5x5", lambda: ACBlock(8, 5, strides=2, gamma_init=1 / 3), 4),
    ("orepa_stride1", lambda: OREPABlock(8, activation="relu"), 8),
    ("orepa_stride2", lambda: OREPABlock(6, strides=2), 4),
    ("orepa_large7", lambda: OREPALargeConv(8, 7, strides=2, activation="relu"), 3),
    ("ecb_prelu", lambda: ECBlock(8), 4),
    ("ecb_identity", lambda: ECBlock(8, with_identity=True), 8),
    ("ecb_linear_narrow", lambda: ECBlock(4, depth_multiplier=2.0, activation=None), 8),
    ("convbn_depthwise_s2", lambda: ConvBN(8, 3, strides=2, groups=8, activation="relu6"), 8),
    ("convbn_1x1_s2", lambda: ConvBN(8, 1, strides=2), 4),
]
IDS = [b[0] for b in BLOCKS]


def built_block(factory, cin, seed=0):
    block = factory()
    x = np.random.default_rng(seed).normal(size=(2, 9, 11, cin)).astype("float32")
    block(x, training=True)  # one training step's forward: builds and moves BN stats
    randomize_norms(block, seed)
    return block


def randomize_ecb_scales(block, seed=0):
    """ECB's edge scales start at ~1e-3; make the edge branches matter in the test."""
    rng = np.random.default_rng(seed)
    for var in block.trainable_variables:
        if "scale" in var.path or var.path.endswith("_bias"):
            var.assign(rng.normal(0, 0.5, var.shape))


@pytest.mark.parametrize("name,factory,cin", BLOCKS, ids=IDS)
@pytest.mark.parametrize("shape", [(1, 7, 7), (3, 10, 13)], ids=["b1_odd", "b3_even"])
def test_deploy_equals_multi_branch(name, factory, cin, shape):
    block = built_block(factory, cin)
    if isinstance(block, ECBlock):
        randomize_ecb_scales(block)
    x = np.random.default_rng(1).normal(size=(*shape, cin)).astype("float32")
    multi = ops.convert_to_numpy(block(x, training=False))
    kernel, bias = block.merged_kernel_and_bias()
    assert tuple(kernel.shape) == (block.kernel_size, block.kernel_size, cin // block.groups, block.filters)
    deployed = block.deploy_layer()
    assert isinstance(deployed, (PaddedConv2D, keras.Sequential))
    assert rel_max_error(multi, deployed(x)) < TOL


def test_repvgg_merge_matches_numpy_reference():
    """Independent check: fold each branch in numpy and add the padded kernels by hand."""
    block = built_block(lambda: RepVGGBlock(4), 4)
    kernel, bias = (ops.convert_to_numpy(t) for t in block.merged_kernel_and_bias())
    ref_k, ref_b = np.zeros((3, 3, 4, 4), np.float32), np.zeros(4, np.float32)
    branch = {"bn_3x3": ops.convert_to_numpy(block.kernel_3x3), "bn_1x1": np.zeros((3, 3, 4, 4), np.float32),
              "bn_identity": np.zeros((3, 3, 4, 4), np.float32)}
    branch["bn_1x1"][1, 1] = ops.convert_to_numpy(block.kernel_1x1)[0, 0]
    branch["bn_identity"][1, 1] = np.eye(4)
    for norm in block.norms:
        g, b, m, v = (ops.convert_to_numpy(w) for w in (norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance))
        t = g / np.sqrt(v + 1e-5)
        ref_k += branch[norm.name] * t
        ref_b += b - m * t
    np.testing.assert_allclose(kernel, ref_k, atol=1e-6)
    np.testing.assert_allclose(bias, ref_b, atol=1e-6)


def test_orepa_kernel_matches_numpy_reference():
    """The generated OREPA kernel against the six branch formulas written with loops."""
    block = built_block(lambda: OREPABlock(4), 3)
    gen = block.generator
    rng = np.random.default_rng(3)
    for var in gen.trainable_variables:  # non-trivial values everywhere (idconv1 starts at 0)
        var.assign(rng.normal(size=var.shape))
    v = {w.name: ops.convert_to_numpy(w) for w in gen.weights}
    k, cin, cout = 3, 3, 4
    ref = np.zeros((k, k, cin, cout))
    for o in range(cout):
        for i in range(cin):
            for h in range(k):
                for w in range(k):
                    terms = [
                        v["origin"][h, w, i, o],
                        v["avg_conv"][i, o] / (k * k),
                        v["pfir_conv"][i, o] * frequency_prior(cout, k)[h, w, o],
                        sum(v["conv2"][h, w, t, o] * (v["idconv1"][t, i] + (t == i)) for t in range(cin)),
                        v["conv_1x1"][i, o] if (h, w) == (1, 1) else 0.0,
                        sum(v["pw"][8 * i + t, o] * v["dw"][h, w, 8 * i + t] for t in range(8)),
                    ]
                    ref[h, w, i, o] = sum(v["vector"][j, o] * term for j, term in enumerate(terms))
    np.testing.assert_allclose(ops.convert_to_numpy(gen.kernel()), ref, rtol=1e-5, atol=1e-5)


def test_frequency_prior_matches_official_k3():
    prior = frequency_prior(4, 3)  # half = 2: channels 0,1 vary along rows, 2,3 along columns
    h = np.arange(3) + 0.5
    np.testing.assert_allclose(prior[:, 0, 1], np.cos(np.pi * h * 2 / 3), atol=1e-6)
    np.testing.assert_allclose(prior[2, :, 3], np.cos(np.pi * h * 2 / 3), atol=1e-6)
    assert np.allclose(prior[:, :, 0], prior[:, :1, 0])  # constant along columns


@pytest.mark.parametrize("name,factory,cin", BLOCKS, ids=IDS)
@pytest.mark.parametrize("training", [False, True], ids=["moving_stats", "batch_stats"])
def test_gradients_reach_every_branch_variable(name, factory, cin, training):
    block = built_block(factory, cin)
    for var in block.trainable_variables:  # OREPA's prior branch scale starts at exactly 0
        if var.path.endswith("vector"):
            var.assign(np.random.default_rng(2).uniform(0.5, 1.0, var.shape))
    x = np.random.default_rng(2).normal(size=(2, 9, 11, cin)).astype("float32")
    with tf.GradientTape() as tape:
        kernel, bias = block.merged_kernel_and_bias(x, training=training)
        loss = ops.sum(ops.square(kernel)) + ops.sum(bias * ops.arange(bias.shape[0], dtype="float32"))
    branch_vars = [v for v in block.trainable_variables if "prelu" not in v.path]
    grads = tape.gradient(loss, branch_vars)
    # ECB's edge-branch 1x1 biases (``*_b0``) are connected but provably inert: the
    # Sobel/Laplacian masks sum to zero, so a constant map contributes nothing.
    missing = [v.path for v, g in zip(branch_vars, grads)
               if g is None or (not np.any(ops.convert_to_numpy(g)) and not v.path.endswith("_b0"))]
    assert not missing, f"no gradient reaches {missing}"


def test_repq_bn_batch_statistics_fold_equals_batchnorm_training_forward():
    """Folding with this batch's statistics equals the multi-branch block in training mode."""
    block = built_block(lambda: RepVGGBlock(8), 8)
    x = np.random.default_rng(4).normal(size=(4, 8, 8, 8)).astype("float32")
    before = [ops.convert_to_numpy(n.moving_mean) for n in block.norms]
    kernel, bias = block.merged_kernel_and_bias(x, training=True)
    folded = ops.convert_to_numpy(block.activate(block.convolve(x, kernel) + bias))
    after_fold = [ops.convert_to_numpy(n.moving_mean) for n in block.norms]
    assert all(not np.allclose(a, b) for a, b in zip(before, after_fold)), "moving stats not updated"
    reference = ops.convert_to_numpy(block(x, training=True))
    assert rel_max_error(reference, folded) < TOL


def test_variance_floor_normalizes_each_branch_with_max_of_batch_and_moving_variance():
    """``variance_floor=True`` equals each branch normalised (in NumPy, on its own output) with
    max(batch variance, moving variance), and the moving variance moves towards that value."""
    block = built_block(lambda: RepVGGBlock(8), 8)
    rng = np.random.default_rng(11)
    for norm in block.norms:  # half the channels above this batch's variance, half below
        norm.moving_variance.assign(np.where(np.arange(8) % 2, 50.0, 1e-3).astype("float32"))
    x = rng.normal(size=(4, 6, 6, 8)).astype("float32")
    moving_before = [ops.convert_to_numpy(n.moving_variance) for n in block.norms]
    expected, used = 0.0, []
    for out, norm, moving in zip(block.branch_outputs(x), block.norms, moving_before):
        out = ops.convert_to_numpy(out).astype("float64")
        batch_var = out.var(axis=(0, 1, 2))
        assert np.any(moving > batch_var) and np.any(moving < batch_var)  # the floor is active on some channels
        var = np.maximum(batch_var, moving)
        used.append(var)
        gamma, beta = (ops.convert_to_numpy(v) for v in (norm.gamma, norm.beta))
        expected = expected + gamma * (out - out.mean(axis=(0, 1, 2))) / np.sqrt(var + norm.epsilon) + beta
    expected = np.maximum(expected, 0.0)  # the block's ReLU
    kernel, bias = block.merged_kernel_and_bias(x, training=True, variance_floor=True)
    folded = ops.convert_to_numpy(block.activate(block.convolve(x, kernel) + bias))
    assert rel_max_error(expected, folded) < TOL
    for norm, moving, var in zip(block.norms, moving_before, used):
        np.testing.assert_allclose(ops.convert_to_numpy(norm.moving_variance), 0.9 * moving + 0.1 * var, rtol=1e-5)


def test_bnest_matches_formula_and_true_statistics_on_large_maps():
    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 2.0, size=(8, 64, 64, 6)).astype("float32")
    kernel = rng.normal(size=(3, 3, 6, 5)).astype("float32")
    bias = rng.normal(size=5).astype("float32")
    mean, var = (ops.convert_to_numpy(t) for t in estimate_output_moments(x, kernel, bias))
    ex, vx = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(mean, ex @ kernel.sum(axis=(0, 1)) + bias, rtol=1e-5)
    np.testing.assert_allclose(var, vx @ np.square(kernel).sum(axis=(0, 1)), rtol=1e-5)
    y = ops.convert_to_numpy(ops.conv(x, kernel, padding="valid")) + bias  # no border: exact regime
    assert np.allclose(mean, y.mean(axis=(0, 1, 2)), rtol=0.02, atol=0.05 * np.abs(mean).max())
    assert np.allclose(var, y.var(axis=(0, 1, 2)), rtol=0.05)  # i.i.d. input: within 5%


def test_bnest_grouped_matches_per_group_computation():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 5, 5, 4)).astype("float32")
    kernel = rng.normal(size=(3, 3, 2, 6)).astype("float32")
    mean, var = (ops.convert_to_numpy(t) for t in estimate_output_moments(x, kernel, None, groups=2))
    ex, vx = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    ks, kq = kernel.sum(axis=(0, 1)), np.square(kernel).sum(axis=(0, 1))
    np.testing.assert_allclose(mean, np.concatenate([ex[:2] @ ks[:, :3], ex[2:] @ ks[:, 3:]]), rtol=1e-5)
    np.testing.assert_allclose(var, np.concatenate([vx[:2] @ kq[:, :3], vx[2:] @ kq[:, 3:]]), rtol=1e-5)


@pytest.mark.parametrize("size,stride,groups", [(1, 1, 1), (2, 2, 1), (2, 1, 1), (5, 2, 1), (3, 1, 4), (2, 1, 2)],
                         ids=["1x1", "2x2_s2", "2x2", "5x5_s2", "3x3_depthwise", "2x2_groups2"])
def test_padding_aware_bnest_matches_true_statistics_on_small_maps(size, stride, groups):
    """Sampled i.i.d. inputs (per-channel mean and std), padded k//2 and convolved: the padding-aware
    estimate lands on the measured batch moments, where the spec's border-blind formula is far off
    (a 1x1 map reads only the centre tap)."""
    rng = np.random.default_rng(size * 10 + stride)
    channels, out = 4, 8 if groups > 1 else 5
    x = (rng.normal(size=(16384, size, size, channels)) * rng.uniform(0.5, 2.0, channels)
         + rng.normal(0.0, 2.0, channels)).astype("float32")
    kernel = rng.normal(size=(3, 3, channels // groups, out)).astype("float32")
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    if groups == channels:
        y = tf.nn.depthwise_conv2d(padded, kernel.reshape(3, 3, channels, out // channels), [1, stride, stride, 1],
                                   "VALID").numpy()
    else:  # groups as separate convs: input channels [g*c/G, (g+1)*c/G) -> outputs [g*o/G, (g+1)*o/G)
        cg, og = channels // groups, out // groups
        y = np.concatenate([tf.nn.conv2d(padded[..., g * cg:(g + 1) * cg], kernel[..., g * og:(g + 1) * og], stride,
                                         "VALID").numpy() for g in range(groups)], axis=-1)
    true_mean, true_var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
    mean, var = (ops.convert_to_numpy(t) for t in estimate_output_moments(x, kernel, None, groups, padding=(1, stride)))
    std = np.sqrt(true_var)
    assert np.abs(mean - true_mean).max() < 0.03 * std.max()  # sampling error of 16,384 x H'W' values
    np.testing.assert_allclose(var, true_var, rtol=0.05)
    blind_mean, blind_var = (ops.convert_to_numpy(t) for t in estimate_output_moments(x, kernel, None, groups))
    # on these maps the border is a large share: the border-blind formula misses by far more than the tolerance
    assert np.abs(blind_mean - true_mean).max() > 0.3 * std.max() or np.abs(blind_var / true_var - 1).max() > 0.3


def test_padding_aware_bnest_equals_the_formula_without_padding():
    """A 1x1 conv (pad 0) reads no padding: both estimates agree to float rounding."""
    rng = np.random.default_rng(9)
    x = rng.normal(1.0, 2.0, size=(4, 3, 3, 6)).astype("float32")
    kernel, bias = rng.normal(size=(1, 1, 6, 5)).astype("float32"), rng.normal(size=5).astype("float32")
    for blind, aware in zip(estimate_output_moments(x, kernel, bias), estimate_output_moments(x, kernel, bias,
                                                                                              padding=(0, 2))):
        np.testing.assert_allclose(ops.convert_to_numpy(aware), ops.convert_to_numpy(blind), rtol=1e-5)


def test_padding_aware_bnest_block_estimates_otherwise_deploys_and_round_trips(tmp_path):
    block = ACBlock(6, strides=2, norm_mode="bnest", bnest_padding_aware=True)
    x = np.random.default_rng(10).normal(size=(8, 2, 2, 4)).astype("float32")
    block(x, training=True)
    blind = ACBlock.from_config({**block.get_config(), "bnest_padding_aware": False})
    blind(x, training=True)
    blind.set_weights(block.get_weights())
    for b in (block, blind):
        b(x, training=True)
    moving = [ops.convert_to_numpy(n.moving_variance) for b in (block, blind) for n in b.norms[:1]]
    assert not np.allclose(moving[0], moving[1])  # the two estimates differ on a 2x2 map
    assert rel_max_error(block(x, training=False), block.deploy_layer()(x)) < TOL
    assert ACBlock.from_config(block.get_config()).bnest_padding_aware is True
    with pytest.raises(ValueError, match="applies to BN estimation: pass norm_mode='bnest'"):
        ACBlock(6, bnest_padding_aware=True)


def test_bnest_block_deploys_exactly():
    block = built_block(lambda: RepVGGBlock(8, norm_mode="bnest"), 8)
    x = np.random.default_rng(7).normal(size=(2, 6, 6, 8)).astype("float32")
    assert rel_max_error(block(x, training=False), block.deploy_layer()(x)) < TOL


@pytest.mark.parametrize("name,factory,cin", BLOCKS, ids=IDS)
def test_block_keras_file_round_trip(name, factory, cin, tmp_path):
    inputs = keras.Input((None, None, cin))
    model = keras.Model(inputs, factory()(inputs))
    x = np.random.default_rng(8).normal(size=(2, 9, 9, cin)).astype("float32")
    model(x, training=True)
    randomize_norms(model)
    model.save(tmp_path / "block.keras")
    loaded = keras.models.load_model(tmp_path / "block.keras")
    np.testing.assert_array_equal(ops.convert_to_numpy(model(x)), ops.convert_to_numpy(loaded(x)))
    deployed = repq.reparametrize(loaded)
    deployed.save(tmp_path / "deploy.keras")
    reloaded = keras.models.load_model(tmp_path / "deploy.keras")
    assert rel_max_error(model(x), reloaded(x)) < TOL


def test_reparametrize_sequential_and_nested_models():
    inner_in = keras.Input((8, 8, 4))
    inner = keras.Model(inner_in, ACBlock(4, activation="relu")(inner_in), name="inner")
    outer_in = keras.Input((8, 8, 4))
    y = inner(RepVGGBlock(4)(outer_in))
    outer = keras.Model(outer_in, keras.layers.GlobalAveragePooling2D()(y))
    seq = keras.Sequential([keras.Input((8, 8, 4)), ECBlock(4), OREPABlock(4), keras.layers.Flatten()])
    x = np.random.default_rng(9).normal(size=(2, 8, 8, 4)).astype("float32")
    for model in (outer, seq):
        model(x, training=True)
        randomize_norms(model)
        deployed = repq.reparametrize(model)
        kinds = {type(l).__name__ for l in all_layers(deployed)}
        assert not kinds & {"ACBlock", "RepVGGBlock", "ECBlock", "OREPABlock"}, kinds
        assert rel_max_error(model(x), deployed(x)) < TOL
    # the copy shares no variables with the original
    ids = {id(v) for v in outer.weights}
    assert not any(id(v) in ids for v in repq.reparametrize(outer).weights)


def test_reparametrize_rejects_subclassed_models():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.block = RepVGGBlock(4)

        def call(self, x):
            return self.block(x)

    net = Net()
    net(np.zeros((1, 4, 4, 4), "float32"))
    with pytest.raises(TypeError, match="functional"):
        repq.reparametrize(net)


def test_invalid_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="odd"):
        ACBlock(4, kernel_size=4)
    with pytest.raises(ValueError, match="activation"):
        RepVGGBlock(4, activation="gelu")
    with pytest.raises(ValueError, match="norm_mode"):
        RepVGGBlock(4, norm_mode="ln")
    with pytest.raises(ValueError, match="identity"):
        RepVGGBlock(8, strides=2, use_identity=True)(np.zeros((1, 4, 4, 8), "float32"))


@pytest.mark.parametrize("size,kernel,stride,dilation", [(8, 3, 2, 1), (9, 3, 2, 1), (8, 2, 2, 1), (7, 5, 3, 1),
                                                         (10, 3, 1, 2), (6, 1, 2, 1), (5, 4, 1, 1)])
def test_same_padding_matches_tensorflow(size, kernel, stride, dilation):
    """``same_padding`` + a 'valid' conv (and PaddedConv2D with that pad) equals TF's own 'same' conv."""
    from repq.layers.padded_conv import same_padding

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size + 1, 3)).astype(np.float32)
    w = rng.normal(size=(kernel, kernel, 3, 4)).astype(np.float32)
    reference = tf.nn.conv2d(x, w, stride, "SAME", dilations=dilation).numpy()
    (top, bottom), (left, right) = pad = (same_padding(size, kernel, stride, dilation),
                                          same_padding(size + 1, kernel, stride, dilation))
    padded = np.pad(x, [(0, 0), (top, bottom), (left, right), (0, 0)])
    np.testing.assert_allclose(tf.nn.conv2d(padded, w, stride, "VALID", dilations=dilation).numpy(), reference,
                               atol=1e-5)
    if dilation == 1:  # PaddedConv2D has no dilation (it refuses one)
        conv = PaddedConv2D(4, kernel, pad=pad, strides=stride, use_bias=False)
        conv.build((None, size, size + 1, 3))
        conv.set_weights([w])
        np.testing.assert_allclose(conv(x).numpy(), reference, atol=1e-5)
        assert conv.compute_output_shape(x.shape) == reference.shape
        assert PaddedConv2D.from_config(conv.get_config()).pad == conv.pad


def test_padded_conv_refuses_dilation():
    with pytest.raises(ValueError, match="dilation_rate"):
        PaddedConv2D(4, 3, dilation_rate=2)
