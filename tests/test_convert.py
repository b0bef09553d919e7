"""Importing official PyTorch checkpoints (repq.convert) against PyTorch re-implementations.

Every block and network is built in PyTorch with random weights and randomized
BN statistics, converted, and compared with the Keras output on the same
inputs (max abs error below 1e-4 of the output scale), for train-time and
deploy checkpoints.
"""

import copy
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from repq import models
import repq
from repq.convert import from_torch_checkpoint, load_torch_state_dict, read_state_dict
from repq.layers import ACBlock, ConvBN, ECBlock, OREPABlock, OREPALargeConv, RepConvBlock, RepVGGBlock
from repq.layers.orepa import frequency_prior
from tests.conftest import rel_max_error

TOL = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET = dict(num_classes=10, input_shape=(64, 64, 3), stem="imagenet")


@pytest.fixture(scope="module")
def ref():
    """The PyTorch reference implementations (skips when torch is missing)."""
    pytest.importorskip("torch")
    from tests import torch_reference
    return torch_reference


def random_input(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def strip_prefix(state):
    """``{"rbr_reparam.weight": w}`` -> ``{"weight": w}`` (a deployed block's own conv)."""
    return {key.split(".", 1)[1]: value for key, value in state.items()}


def assert_close(reference, value):
    assert np.all(np.isfinite(reference)) and np.abs(reference).max() > 1e-3
    assert rel_max_error(reference, value) < TOL


# --------------------------------------------------------------------------- blocks
# (id, torch factory(ref), keras factory, input channels, deployed attribute or None)
BLOCKS = [
    ("repvgg_identity", lambda r: r.RepVGGBlock(8, 8, 1), lambda: RepVGGBlock(8), 8, "rbr_reparam"),
    ("repvgg_stride2", lambda r: r.RepVGGBlock(8, 12, 2), lambda: RepVGGBlock(12, strides=2), 8, "rbr_reparam"),
    ("acb", lambda r: r.ACBlock(4, 6), lambda: ACBlock(6), 4, "fused_conv"),
    ("acb_stride2", lambda r: r.ACBlock(4, 8, 3, 2), lambda: ACBlock(8, strides=2), 4, "fused_conv"),
    ("acb_5x5", lambda r: r.ACBlock(4, 8, 5, 2, padding=2), lambda: ACBlock(8, 5, strides=2), 4, "fused_conv"),
    ("orepa_relu", lambda r: r.OREPA(8, 8, relu=True), lambda: OREPABlock(8, activation="relu"), 8,
     "orepa_reparam"),
    ("orepa_stride2", lambda r: r.OREPA(4, 6, 3, 2), lambda: OREPABlock(6, strides=2), 4, "orepa_reparam"),
    ("orepa_large", lambda r: r.OREPALargeConv(3, 8, 7, 2),
     lambda: OREPALargeConv(8, 7, strides=2, activation="relu"), 3, "or_large_reparam"),
    ("ecb_prelu", lambda r: r.ECB(4, 8), lambda: ECBlock(8), 4, None),
    ("ecb_identity", lambda r: r.ECB(8, 8, with_idt=True), lambda: ECBlock(8, with_identity=True), 8, None),
    ("ecb_linear", lambda r: r.ECB(8, 4, act_type="linear"), lambda: ECBlock(4, activation=None), 8, None),
    ("convbn_1x1_s2", lambda r: r.ConvBN(4, 8, 1, 2), lambda: ConvBN(8, 1, strides=2), 4, "conv"),
]


def built(layer, x):
    layer(x)
    return layer


@pytest.mark.parametrize("torch_factory,keras_factory,cin,deployed", [b[1:] for b in BLOCKS],
                         ids=[b[0] for b in BLOCKS])
def test_block_train_and_deploy(ref, torch_factory, keras_factory, cin, deployed):
    x = random_input((2, 11, 10, cin))
    module = ref.randomize(torch_factory(ref))
    expected = ref.run(module, x)
    block = load_torch_state_dict(built(keras_factory(), x), ref.numpy_state_dict(module))
    assert_close(expected, block(x))
    assert_close(expected, block.deploy_layer()(x))
    if isinstance(block, ECBlock):  # ECB has no deploy module; its branches run in training mode
        assert_close(ref.run(module.train(), x), block(x))
        return
    ref.switch_to_deploy(module)
    state = ref.numpy_state_dict(module)
    assert {key.split(".")[0] for key in state} == {deployed}
    conv = load_torch_state_dict(built(keras_factory(), x).deploy_layer(), strip_prefix(state))
    assert_close(expected, conv(x))


def test_shared_prelu_parameter_is_broadcast(ref):
    module = ref.ECB(4, 6)
    module.act = ref.nn.PReLU(1)
    module = ref.randomize(module)
    x = random_input((1, 8, 8, 4))
    block = load_torch_state_dict(built(ECBlock(6), x), ref.numpy_state_dict(module))
    np.testing.assert_allclose(block.prelu.alpha.numpy(), np.full((1, 1, 6), module.act.weight.item()), rtol=1e-6)
    assert_close(ref.run(module, x), block(x))


# ------------------------------------------------------------------------- networks
# (model name, torch factory(ref), create_model kwargs, input shape)
NETWORKS = [
    ("repvgg_a0", lambda r: r.repvgg_a0(10), IMAGENET, (2, 64, 64, 3)),
    pytest.param("repvgg_b0", lambda r: r.repvgg_b0(10), IMAGENET, (2, 64, 64, 3), marks=pytest.mark.slow),
    ("ac_resnet18", lambda r: r.StageResNet18("acnet", 10), IMAGENET, (2, 64, 64, 3)),
    ("orepa_resnet18", lambda r: r.StageResNet18("orepa", 10), IMAGENET, (2, 64, 64, 3)),
    ("resnet18", lambda r: r.TVResNet18(10), IMAGENET, (2, 64, 64, 3)),
    ("mobilenetv2", lambda r: r.TVMobileNetV2(10), IMAGENET, (2, 64, 64, 3)),
    pytest.param("mobilenetv2", lambda r: r.TVMobileNetV2(10, width_mult=0.5),
                 dict(IMAGENET, width_multiplier=0.5), (2, 64, 64, 3), marks=pytest.mark.slow),
    ("ecbsr_m4c16_x2", lambda r: r.ECBSR(scale=2), {}, (2, 12, 10, 1)),
    ("ecbsr_m4c16_x4", lambda r: r.ECBSR(scale=4), {}, (2, 12, 10, 1)),
]
NETWORK_IDS = ["repvgg_a0", "repvgg_b0", "ac_resnet18", "orepa_resnet18", "resnet18", "mobilenetv2",
               "mobilenetv2_0.5", "ecbsr_x2", "ecbsr_x4"]


def deploy_reference(ref, module):
    """What the official repo deploys: fused modules, or PlainSR for ECBSR."""
    if isinstance(module, ref.ECBSR):
        return ref.ecbsr_to_plainsr(module, scale=module.upsampler.upscale_factor)
    return ref.switch_to_deploy(copy.deepcopy(module))


@pytest.mark.parametrize("name,torch_factory,kwargs,shape", NETWORKS, ids=NETWORK_IDS)
def test_network_train_checkpoint(ref, name, torch_factory, kwargs, shape):
    module = ref.randomize(torch_factory(ref))
    x = random_input(shape)
    model = load_torch_state_dict(models.create_model(name, **kwargs), ref.numpy_state_dict(module))
    expected = ref.run(module, x)
    assert_close(expected, model(x, training=False))
    assert_close(expected, repq.reparametrize(model)(x, training=False))


@pytest.mark.parametrize("name,torch_factory,kwargs,shape", NETWORKS, ids=NETWORK_IDS)
def test_network_deploy_checkpoint(ref, name, torch_factory, kwargs, shape):
    module = deploy_reference(ref, ref.randomize(torch_factory(ref)))
    x = random_input(shape)
    model = repq.reparametrize(models.create_model(name, **kwargs))
    load_torch_state_dict(model, ref.numpy_state_dict(module))
    assert_close(ref.run(module, x), model(x, training=False))


# --------------------------------------------------------------------------- errors
def repvgg_block_state(cin=4, cout=4):
    """A hand-made official RepVGGBlock state_dict (no torch needed)."""
    rng = np.random.default_rng(0)
    state = {"rbr_dense.conv.weight": rng.normal(size=(cout, cin, 3, 3)),
             "rbr_1x1.conv.weight": rng.normal(size=(cout, cin, 1, 1))}
    for bn in ("rbr_dense.bn", "rbr_1x1.bn", "rbr_identity"):
        state.update({f"{bn}.weight": np.ones(cout), f"{bn}.bias": np.zeros(cout),
                      f"{bn}.running_mean": np.zeros(cout), f"{bn}.running_var": np.ones(cout),
                      f"{bn}.num_batches_tracked": np.array(3)})
    return state


def test_all_key_problems_in_one_error_and_nothing_assigned():
    block = built(RepVGGBlock(4), random_input((1, 5, 5, 4)))
    before = [w.numpy().copy() for w in block.weights]
    state = repvgg_block_state()
    del state["rbr_1x1.bn.running_var"]
    state["rbr_dense.conv.weight"] = state["rbr_dense.conv.weight"][:, :, :1]
    state["rbr_extra.weight"] = np.zeros(3)
    with pytest.raises(ValueError) as err:
        load_torch_state_dict(block, state)
    message = str(err.value)
    assert "1 unknown key: rbr_extra.weight" in message
    assert "1 missing key: rbr_1x1.bn.running_var" in message
    assert "rbr_dense.conv.weight (expected (4, 4, 3, 3), got (4, 4, 1, 3))" in message
    assert "\n" not in message
    for old, new in zip(before, block.weights):
        np.testing.assert_array_equal(old, new.numpy())


def test_non_strict_ignores_unknown_and_missing_but_not_shapes():
    block = built(RepVGGBlock(4), random_input((1, 5, 5, 4)))
    state = repvgg_block_state()
    del state["rbr_identity.weight"]
    state["rbr_extra.weight"] = np.zeros(3)
    load_torch_state_dict(block, state, strict=False)
    np.testing.assert_allclose(block.kernel_3x3.numpy(), state["rbr_dense.conv.weight"].transpose(2, 3, 1, 0))
    state["rbr_1x1.conv.weight"] = np.zeros((4, 4, 3, 3))
    with pytest.raises(ValueError, match="mis-shaped"):
        load_torch_state_dict(block, state, strict=False)


def test_wrong_fixed_buffers_are_rejected(ref):
    x = random_input((1, 6, 6, 4))
    state = ref.numpy_state_dict(ref.ECB(4, 4))
    state["conv1x1_sbx.mask"] = -state["conv1x1_sbx.mask"]
    with pytest.raises(ValueError, match=r"conv1x1_sbx.mask \(not the fixed sobelx mask\)"):
        load_torch_state_dict(built(ECBlock(4), x), state)
    state = ref.numpy_state_dict(ref.OREPA(4, 4))
    state["id_tensor"] = np.zeros_like(state["id_tensor"])
    with pytest.raises(ValueError, match=r"id_tensor \(not the fixed identity\)"):
        load_torch_state_dict(built(OREPABlock(4), x), state)


def test_orepa_prior_is_loaded_with_a_warning_when_it_differs(ref):
    x = random_input((1, 6, 6, 4))
    state = ref.numpy_state_dict(ref.OREPA(4, 6))
    np.testing.assert_allclose(state["weight_orepa_prior"], frequency_prior(6, 3).transpose(2, 0, 1), atol=1e-6)
    state["weight_orepa_prior"] = state["weight_orepa_prior"] * 2
    with pytest.warns(UserWarning, match="frequency prior"):
        block = load_torch_state_dict(built(OREPABlock(6), x), state)
    np.testing.assert_allclose(block.generator.prior.numpy(), 2 * frequency_prior(6, 3), atol=1e-6)


def test_train_and_deploy_checkpoints_need_the_matching_model_form(ref):
    module = ref.randomize(ref.ECBSR())
    plain = ref.numpy_state_dict(ref.ecbsr_to_plainsr(module))
    with pytest.raises(ValueError, match=r"deploy .*repq.reparametrize\(model\)"):
        load_torch_state_dict(models.create_model("ecbsr_m4c16_x2"), plain)
    with pytest.raises(ValueError, match="train-time .* re-parametrized"):
        load_torch_state_dict(repq.reparametrize(models.create_model("ecbsr_m4c16_x2")),
                              ref.numpy_state_dict(module))


def test_network_key_errors_use_official_names():
    model = models.create_model("repvgg_a0", **IMAGENET)
    with pytest.raises(ValueError) as err:
        load_torch_state_dict(model, {"stage0.rbr_dense.conv.weight": np.zeros((48, 3, 3, 3))})
    # official names; the list is capped (a wrong architecture used to give one 12.7 KB line)
    assert "289 missing keys: stage0.rbr_dense.bn.weight, stage0.rbr_dense.bn.bias" in str(err.value)
    assert "(284 more)" in str(err.value) and len(str(err.value)) < 600


# ---------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def ecbsr_pair(ref):
    """A randomized torch ECBSR x2 and an LR test image."""
    return ref.randomize(ref.ECBSR()), random_input((1, 9, 7, 1)) * 50 + 100


def test_pth_wrapped_data_parallel_and_deploy_detection(ref, ecbsr_pair, tmp_path):
    import torch
    module, x = ecbsr_pair
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in module.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ecbsr.pth")
    model = from_torch_checkpoint("ecbsr_m4c16_x2", tmp_path / "ecbsr.pth")
    assert any(isinstance(layer, RepConvBlock) for layer in model.layers)
    assert_close(ref.run(module, x), model(x))

    torch.save({"model": ref.ecbsr_to_plainsr(module).state_dict()}, tmp_path / "plainsr.pt")
    deployed = from_torch_checkpoint("ecbsr_m4c16_x2", tmp_path / "plainsr.pt")
    assert not any(isinstance(layer, RepConvBlock) for layer in deployed.layers)
    assert_close(ref.run(module, x), deployed(x))


def test_npz_and_safetensors_round_trip(ref, ecbsr_pair, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    module, x = ecbsr_pair
    state = ref.numpy_state_dict(module)
    np.savez(tmp_path / "ecbsr.npz", **state)
    safetensors_numpy.save_file(state, str(tmp_path / "ecbsr.safetensors"))
    expected = ref.run(module, x)
    for path in (tmp_path / "ecbsr.npz", tmp_path / "ecbsr.safetensors"):
        assert read_state_dict(path).keys() == state.keys()
        assert_close(expected, from_torch_checkpoint("ecbsr_m4c16_x2", path, deploy=True)(x))


@pytest.mark.parametrize("module,suffix,hint", [("torch", ".pth", "pip install .[torch]"),
                                                 ("safetensors.numpy", ".safetensors", "pip install .[safetensors]")])
def test_missing_optional_dependency_message(monkeypatch, tmp_path, module, suffix, hint):
    monkeypatch.setitem(sys.modules, module, None)
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ImportError) as err:
        from_torch_checkpoint("repvgg_a0", path)
    assert hint in str(err.value)


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "nope.pth")
    (tmp_path / "model.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported checkpoint"):
        read_state_dict(tmp_path / "model.h5")


# ------------------------------------------------------------------------------ CLI
def run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-m", "repq.convert", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_cli(ref, ecbsr_pair, tmp_path):
    import torch
    module, _ = ecbsr_pair
    checkpoint, output = tmp_path / "ecbsr.pth", tmp_path / "ecbsr.keras"
    torch.save(module.state_dict(), checkpoint)
    # Both at once: each process spends most of its time importing TensorFlow.
    ok = run_cli("--model", "ecbsr_m4c16_x2", "--torch_checkpoint", str(checkpoint), "--output", str(output),
                 "--input_size", "16", "--deploy")
    bad = run_cli("--model", "ecbsr_m4c16_x4", "--torch_checkpoint", str(checkpoint),
                  "--output", str(tmp_path / "x4.keras"))
    usage = run_cli("--model", "repvgg_a0", "--torch_checkpoint", str(checkpoint), "--output",
                    str(tmp_path / "u.keras"), "--input_size=big")
    (_, ok_err), (_, bad_err) = ok.communicate(timeout=300), bad.communicate(timeout=300)
    _, usage_err = usage.communicate(timeout=300)
    assert usage.returncode == 2, usage_err  # absl's flag errors are usage errors too: one line, exit 2
    assert usage_err.strip().splitlines()[-1].startswith("error: flag --input_size=big")
    assert "Traceback" not in usage_err and "FATAL" not in usage_err, usage_err
    assert ok.returncode == 0, ok_err
    model = keras.models.load_model(output)
    assert model.input_shape == (None, 16, 16, 1)
    assert not any(isinstance(layer, RepConvBlock) for layer in model.layers)
    x16 = random_input((1, 16, 16, 1), seed=1) * 50 + 100
    assert_close(ref.run(module, x16), model(x16))
    assert bad.returncode == 1
    assert bad_err.strip().splitlines()[-1].startswith("error: state_dict does not match 'ecbsr_m4c16_x4'")
    for err in (ok_err, bad_err):  # TF's start-up lines are filtered (repq.cli_env)
        assert "Could not find cuda drivers" not in err and "absl::InitializeLog" not in err, err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ecbsr.keras", "ecbsr.pth"]  # no temporary left


def test_cli_input_errors_are_one_line_api_errors(tmp_path):
    """What the CLI reports (it prints these as ``error: ...`` and exits 1)."""
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        from_torch_checkpoint("repvgg_a0", tmp_path / "missing.pth")
    np.savez(tmp_path / "empty.npz", x=np.zeros(1))
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        from_torch_checkpoint("vgg16", tmp_path / "empty.npz")
