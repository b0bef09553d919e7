"""Integer TFLite / SavedModel export of QAT models (repq.export)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from repq import models
import repq
from repq.data import get_dataset
from repq.export import ExportError, fidelity, integer_emulation, tflite_graph
from repq.export.api import integer_tflite
from repq.export.files import load_checkpoint
from repq.qat import quantize_model
from repq.training.evaluation import evaluate
from repq.graph import all_layers
from tests.conftest import randomize_norms

CLASSIFIERS = ["repvgg_a0", "ac_resnet18", "orepa_resnet18"]


def _qat_model(name, bits):
    """A QAT model with non-trivial BN statistics and initialised activation steps, plus data."""
    if name.startswith("ecbsr"):
        fp = models.create_model(name)
        train, _ = get_dataset("skimage_sr", "train", 8, limit=16, patch_size=32)
        test, _ = get_dataset("skimage_sr", "test", 2, limit=2, image_size=64)
    else:
        fp = models.create_model(name, num_classes=10, input_shape=(32, 32, 3))
        train, _ = get_dataset("mnist5k", "train", 16, limit=32)
        test, _ = get_dataset("mnist5k", "test", 32, limit=64)
    randomize_norms(fp)
    qat = quantize_model(fp, bits, bits)
    qat(next(iter(train))[0], training=True)
    return qat, [x.numpy() for x, _ in train], [(x.numpy(), y.numpy()) for x, y in test]


def _check_fidelity(name, bits, tmp_path):
    qat, rep, test = _qat_model(name, bits)
    sr = 2 if name.startswith("ecbsr") else None
    path, report = repq.export_tflite(qat, str(tmp_path / "m.tflite"), rep, test, sr_scale=sr)
    assert os.path.isfile(path) and os.path.isfile(str(tmp_path / "m_fidelity.md"))
    assert report["all_convs_integer"]
    assert report["integer_only"], report["float_ops"]
    assert report["weights_on_grid"]
    assert report["scales_match_learned"]
    # the QAT model computed in integers (repq.integer_predict) is the TFLite model, bit for bit
    assert report["integer_emulation"]["max_abs_diff_steps"] == 0.0, report["integer_emulation"]
    assert report["integer_emulation"]["bit_exact_fraction"] == 1.0
    return report


def _check_close(report):
    if "top1_agreement" in report:
        assert report["top1_agreement"] >= 0.99
    # differences are whole steps, measured on dequantized floats (float noise ~1e-5 steps)
    assert report["max_abs_diff_steps"] <= 2.0 + 1e-3, report


@pytest.mark.parametrize("name,bits", [("repvgg_a0", 4), ("ecbsr_m4c16_x2", 4)])
def test_tflite_graph_uses_learned_quantization(name, bits, tmp_path):
    report = _check_fidelity(name, bits, tmp_path)
    # sub-8-bit conv inputs sit in a 2^(8-bits) times finer int8 container (graph.fine_container),
    # which shrinks TFLite's bias and requantization rounding errors by the same factor
    containers = {c["input_container"] for c in report["graph"]["convs"] if c.get("input_container")}
    assert 2 ** (8 - bits) in containers, containers


@pytest.mark.parametrize("name,bits", [("repvgg_a0", 4), ("ecbsr_m4c16_x2", 4)])
def test_tflite_matches_qat_within_two_steps(name, bits, tmp_path):
    _check_close(_check_fidelity(name, bits, tmp_path))


# The 8-bit AC-/OREPA-ResNet-18 cases repeat their 4-bit graphs at another width (~25 s each): slow.
@pytest.mark.parametrize("name,bits", [("ac_resnet18", 4), ("orepa_resnet18", 4), ("repvgg_a0", 8),
                                       pytest.param("ac_resnet18", 8, marks=pytest.mark.slow),
                                       pytest.param("orepa_resnet18", 8, marks=pytest.mark.slow), ("ecbsr_m4c16_x2", 8)])
def test_integer_inference_is_bit_exact_with_tflite(name, bits, tmp_path):
    """Residual ADDs, MAX_POOL, QUANTIZE and 8-bit convs included: 0 output steps between the
    integer-exact QAT inference and LiteRT; the float simulation is only compared, not bounded
    (random-BN AC-ResNet-18 W4A4 measured 13 output steps)."""
    emulated = _check_fidelity(name, bits, tmp_path)["integer_emulation"]
    assert emulated.get("top1_agreement", 1.0) == 1.0
    assert emulated.get("psnr_keras") == emulated.get("psnr_tflite")  # SR: the same PSNR (None for classifiers)


class _RecordingInterpreter:
    """A stand-in for a LiteRT interpreter with int8 I/O that records the input integers it is given."""

    def __init__(self, scale, zero_point):
        self.quantization, self.fed = (scale, zero_point), []

    def get_input_details(self):
        return [dict(index=0, dtype=np.int8, quantization=self.quantization)]

    def get_output_details(self):
        return [dict(index=1, dtype=np.int8, quantization=(1.0, 0))]

    def set_tensor(self, index, value):
        self.fed.append(value)

    def invoke(self):
        pass

    def get_tensor(self, index):
        return self.fed[-1]


def test_tflite_gets_the_input_integers_the_integer_emulation_starts_from():
    """Trained ECBSR models were 99.94 % bit-exact with LiteRT when the harness quantized inputs in
    float32: x / s within float32 error of a .5 tie went to the other integer than the emulation's
    float64 rounding. Here every fed integer equals integer_emulation.quantize_float's."""
    scale, zero_point = float(np.float32(0.0371)), -3
    ties = np.float32((np.arange(-120, 120) + 0.5) * scale)  # float32 values next to every .5 tie
    x = np.stack([ties + d * np.spacing(ties) for d in range(-3, 4)]).astype(np.float32).reshape(-1, 1, 1, 1)
    float32_rounding = np.floor(x / scale + 0.5)
    assert (float32_rounding != np.floor(x.astype(np.float64) / scale + 0.5)).sum() > 100  # the case exists here
    it = _RecordingInterpreter(scale, zero_point)
    fidelity.run_tflite(it, x)
    fed = np.concatenate(it.fed).astype(np.int64)
    np.testing.assert_array_equal(fed, np.clip(integer_emulation.quantize_float(x, scale, zero_point), -128, 127))


@pytest.mark.parametrize("bits", [4, 8])
def test_tensor_read_with_two_learned_steps(bits, tmp_path):
    """A ResNet block output read by the next conv1 and the projection shortcut, whose learned
    steps differ once trained: TFLite stores it once and requantizes it for one reader. The
    graph stays integer (8 bits: the converter used to leave that ADD in float) and the
    integer-exact inference follows TFLite's choice of scale."""
    qat, rep, test = _qat_model("ac_resnet18", bits)
    shortcuts = [l for l in all_layers(qat)
                 if "shortcut" in l.name and getattr(l, "input_quantizer", None) is not None]
    assert len(shortcuts) == 3
    for layer in shortcuts:
        layer.input_quantizer.step.assign(layer.input_quantizer.step * 1.01)
    path, report = repq.export_tflite(qat, str(tmp_path / "m.tflite"), rep, test)
    assert report["integer_only"], report["float_ops"]
    assert report["integer_emulation"]["max_abs_diff_steps"] == 0.0
    assert report["scales_match_learned"]


def _two_reader_block(bits):
    """A stem, then conv1 (3x3, padded) and a 1x1 shortcut reading its output, added: a ResNet block
    in small. Returns the QAT model and a batch of inputs."""
    from repq.layers import ConvBN

    inputs = keras.Input((8, 8, 4))
    x = ConvBN(8, 3, activation="relu", name="stem")(inputs)
    y = keras.layers.ReLU()(keras.layers.Add()([ConvBN(8, 3, name="conv1")(x), ConvBN(8, 1, name="shortcut")(x)]))
    fp = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(y)))
    randomize_norms(fp)
    qat = quantize_model(fp, bits, bits)
    x = np.random.default_rng(0).normal(size=(16, 8, 8, 4)).astype("float32")
    qat(x, training=True)
    return qat, x


def _reader_steps(qat):
    return {l.name: l.input_quantizer.step for l in all_layers(qat)
            if l.name in ("conv1", "shortcut") and getattr(l, "input_quantizer", None) is not None}


def test_tensor_read_with_steps_one_float_apart(tmp_path):
    """Two readers of one tensor whose learned steps are one float32 ulp apart, the values of a trained
    W3A3 AC-ResNet-18 (at 3 bits both fake-quant ranges round to the same float32): the converter failed
    on the PAD before conv1 ("same scale constraint"); the export reads the tensor with one step
    (``graph.SAME_STEP_RTOL``) and stays bit-exact with its emulation."""
    qat, x = _two_reader_block(3)
    steps = _reader_steps(qat)
    steps["conv1"].assign(np.float32(1.5214132))
    steps["shortcut"].assign(np.float32(1.5214133))
    path, report = repq.export_tflite(qat, str(tmp_path / "m.tflite"), [x[:8], x[8:]], [(x, np.zeros(16, "int64"))])
    assert report["integer_only"], report["float_ops"]
    assert report["integer_emulation"]["max_abs_diff_steps"] == 0.0


@pytest.mark.parametrize("apart, unified", [(1, True), (1e-3, False)], ids=["one_ulp", "1e-3"])
def test_export_unifies_only_steps_within_the_tolerance(apart, unified):
    """Two readers of one tensor: steps one ulp apart get the first reader's step in the export graph;
    steps 1e-3 apart keep their own (and the QAT model keeps its steps either way)."""
    from repq.export.graph import export_model

    qat, _ = _two_reader_block(4)
    steps = _reader_steps(qat)
    base = np.float32(0.37)
    other = np.nextafter(base, np.float32(1)) if apart == 1 else np.float32(base * (1 + apart))
    steps["conv1"].assign(base)
    steps["shortcut"].assign(other)
    exported = {l.name: float(l.input_step.numpy()) for l in all_layers(export_model(qat)) if hasattr(l, "input_step")}
    if unified:  # both get the step of the reader that comes first in the graph
        assert exported["conv1"] == exported["shortcut"] and exported["conv1"] in (base, other)
    else:
        assert (exported["conv1"], exported["shortcut"]) == (base, other)
    assert (float(steps["conv1"].numpy()), float(steps["shortcut"].numpy())) == (base, other)


def test_integer_predict_api():
    qat, rep, test = _qat_model("repvgg_a0", 4)
    x = test[0][0][:8]
    y = repq.integer_predict(qat, x)
    model_bytes, _, step = integer_tflite(qat, None)
    np.testing.assert_array_equal(y, fidelity.run_tflite(tflite_graph.interpreter(model_bytes, default_delegates=True), x))
    program = integer_emulation.Program(repq.export.export_graph(qat)[0])  # prepared once, reused per batch
    np.testing.assert_array_equal(repq.integer_predict(qat, x, graph=program, batch_size=3), y)
    # it is the QAT model up to rounding: within a few output steps of the float simulation
    assert np.abs(y - np.asarray(qat(x, training=False))).max() <= 8 * step
    with pytest.raises(ValueError, match="shape"):
        repq.integer_predict(qat, x[:, :16])
    # train.py's "integer" metric: evaluate() with integer_predict in place of the model's call
    data = [(tf.constant(x), tf.constant(test[0][1][:8]))]
    top1 = evaluate(qat, data, "classification", predict=lambda b: repq.integer_predict(qat, np.asarray(b)))["top1"]
    assert top1 == 100.0 * np.mean(np.argmax(y, -1) == test[0][1][:8])


def _short_fit_fidelity(name, bits):
    """benchmarks/export_fidelity.py's row: 40 FP + 40 QAT Adam steps, 256 mnist5k / 4 SR test images."""
    from benchmarks.export_fidelity import measure
    row = measure(name, bits, fp_steps=40, qat_steps=40)
    assert row["all_convs_integer"] and row["weights_on_grid"] and row["scales_match_learned"]
    assert row["integer_max_steps"] == 0.0 and row["integer_bit_exact_fraction"] == 1.0, row
    if "top1_agreement" in row:
        assert row["top1_agreement"] >= 0.99
    return row


@pytest.mark.slow
@pytest.mark.parametrize("name,bits", [(n, b) for n in CLASSIFIERS + ["ecbsr_m4c16_x2"] for b in (8, 4)])
def test_short_fit_models_match_tflite(name, bits):
    """Integer-exact QAT inference == TFLite for every family and width; the float-simulated QAT
    model is within 2 output steps for the 8-bit models and ECBSR W4A4. The deep 4-bit classifiers'
    float simulation reaches 5-7 steps (near-tie flips amplified; benchmarks/results/export_fidelity.md)."""
    row = _short_fit_fidelity(name, bits)
    if bits == 8 or name.startswith("ecbsr"):
        assert row["xnnpack_max_steps"] <= 2.0 + 1e-3


@pytest.mark.parametrize("name", ["repvgg_a0", "ecbsr_m4c16_x2", "ac_resnet18"])
def test_qat_model_rounds_every_int8_tensor(name):
    """The QAT model already holds every tensor the integer TFLite model holds in int8: the export
    graph needs no calibrated range and computes exactly the QAT model's outputs."""
    qat, rep, test = _qat_model(name, 4)
    model_bytes, graph, _ = integer_tflite(qat, None, input_shape=test[0][0].shape[1:])
    assert model_bytes
    x = test[0][0]
    np.testing.assert_array_equal(np.asarray(graph(x, training=False)), np.asarray(qat(x, training=False)))


def test_savedmodel_reload_reproduces_keras(tmp_path):
    qat, _, test = _qat_model("ecbsr_m4c16_x2", 4)
    x = test[0][0]
    repq.export_savedmodel(qat, str(tmp_path / "sm"), dataset="skimage_sr")
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(loaded.serve(x).numpy(), qat(x, training=False).numpy(), atol=1e-3)
    np.testing.assert_allclose(loaded.serve_uint8(np.clip(x, 0, 255).astype(np.uint8)).numpy(),
                               qat(np.floor(np.clip(x, 0, 255)), training=False).numpy(), atol=1e-3)


def test_float_model_is_refused(tmp_path):
    fp = models.create_model("ecbsr_m4c16_x2")
    with pytest.raises(ExportError, match="quantize_model first"):
        repq.export_tflite(fp, str(tmp_path / "m.tflite"), [np.zeros((1, 8, 8, 1), np.float32)])
    assert not os.path.exists(tmp_path / "m.tflite")


def test_missing_representative_data(tmp_path):
    fp = models.create_model("ecbsr_m4c16_x2")
    qat = quantize_model(fp, 4, 4, range_quantizers=False)  # tensors without a range need calibration
    qat(np.zeros((1, 8, 8, 1), np.float32), training=True)
    with pytest.raises(ExportError, match="representative_data"):
        repq.export_tflite(qat, str(tmp_path / "m.tflite"), None, [np.zeros((1, 8, 8, 1), np.float32)])
    assert not os.path.exists(tmp_path / "m.tflite")


def test_unsupported_layer(tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    outputs = keras.layers.LayerNormalization()(x)
    qat = quantize_model(keras.Model(inputs, outputs), 4, 4)
    with pytest.raises(ExportError, match="LayerNormalization"):
        repq.export_tflite(qat, str(tmp_path / "m.tflite"), [np.zeros((1, 8, 8, 1), np.float32)])


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.keras"))
    with pytest.raises(ExportError, match="run train.py"):
        load_checkpoint(str(tmp_path))
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="is not a valid .keras file"):
        load_checkpoint(str(tmp_path / "bad.keras"))
    (tmp_path / "empty.keras").write_bytes(b"")
    with pytest.raises(ExportError, match="is empty"):
        load_checkpoint(str(tmp_path / "empty.keras"))


def test_cli_one_line_error(tmp_path, capsys):
    from repq.cli import export
    assert export.main(["--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    # one error line; the stage lines before it ("export.py: loading ...") are progress
    errors = [line for line in err.splitlines() if not line.startswith("export.py: ") or "error:" in line]
    assert len(errors) == 1 and "does not exist" in errors[0] and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out")


def test_cli_writes_bundle(tmp_path):
    from repq.cli import export
    qat, _, _ = _qat_model("ecbsr_m4c16_x2", 4)
    qat.save(str(tmp_path / "qat_model.keras"))
    out = tmp_path / "out"
    assert export.main(["--checkpoint", str(tmp_path), "--output", str(out), "--num_eval", "2",
                        "--num_calib", "16"]) == 0
    assert {"saved_model", "model_int8.tflite", "model_int8_fidelity.json"} <= set(os.listdir(out))


def _tiny_qat():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    qat = quantize_model(keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(x)), 4, 4)
    qat(np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype("float32"), training=True)
    return qat


@pytest.mark.parametrize("images,error,message", [
    (np.zeros((2, 8, 8, 3), np.float32), ValueError, r"shape \(2, 8, 8, 3\), the model takes \(N, 8, 8, 1\)"),
    (np.zeros((8, 8, 1), np.float32), ValueError, "the model takes"),
    (np.zeros((2, 8, 8, 1), np.uint8), TypeError, "must be float arrays"),
    (np.full((2, 8, 8, 1), np.nan, np.float32), ValueError, "NaN or Inf"),
])
def test_export_api_rejects_bad_images(tmp_path, images, error, message):
    with pytest.raises(error, match=message):
        repq.export_tflite(_tiny_qat(), str(tmp_path / "m.tflite"), [images])
    assert not os.path.exists(tmp_path / "m.tflite")


def test_atomic_directory_replaces_an_old_export_and_keeps_it_on_error(tmp_path):
    from repq.export.files import atomic_directory
    from repq.outputs import MARKER, write_marker
    out = tmp_path / "out"
    out.mkdir()
    write_marker(str(out), "export")  # an earlier export: the only non-empty folder it replaces
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(str(out)) as tmp:
            open(os.path.join(tmp, "new.txt"), "w").close()
            raise RuntimeError("disk full")
    assert sorted(os.listdir(out)) == [MARKER, "old.txt"] and os.listdir(tmp_path) == ["out"]
    with atomic_directory(str(out)) as tmp:
        open(os.path.join(tmp, "new.txt"), "w").close()
    assert sorted(os.listdir(out)) == [MARKER, "new.txt"] and os.listdir(tmp_path) == ["out"]  # no temp or .old- left


def test_export_of_a_model_loaded_in_a_fresh_session(tmp_path):
    """A loaded model's range quantizers hold the default names a new layer would get again
    (regression: 'The name "range_fake_quant" is used 2 times')."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    qat = quantize_model(keras.Model(inputs, x), 4, 4)
    images = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    qat(images, training=True)
    qat.save(str(tmp_path / "qat.keras"))
    keras.backend.clear_session()  # layer-name counters start again, as in a new process
    loaded = keras.models.load_model(str(tmp_path / "qat.keras"))
    _, report = repq.export_tflite(loaded, str(tmp_path / "m.tflite"), None, [(images, np.zeros(4))])
    assert report["all_convs_integer"] and report["top1_agreement"] == 1.0


def _bias_free_qat():
    """A QAT model of plain Keras layers without biases (``use_bias=False``), calibrated."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", use_bias=False)(inputs)
    x = keras.layers.Dense(3, use_bias=False)(keras.layers.GlobalAveragePooling2D()(x))
    qat = quantize_model(keras.Model(inputs, x), 8, 8)
    images = np.random.default_rng(1).normal(size=(6, 8, 8, 1)).astype("float32")
    qat(images, training=True)
    return qat, images


def test_bias_free_layers_deploy_and_export(tmp_path):
    """``use_bias=False`` convs/denses deploy with a zero bias (regression: set_weights length 4 vs 3)."""
    qat, images = _bias_free_qat()
    deploy = repq.reparametrize(qat)
    np.testing.assert_allclose(deploy(images, training=False), qat(images, training=False), atol=1e-5)
    _, report = repq.export_tflite(qat, str(tmp_path / "m.tflite"), images, (images, np.zeros(6)))
    assert report["all_convs_integer"] and report["top1_agreement"] == 1.0


@pytest.mark.parametrize("form", ["numpy", "dataset", "list", "generator"])
def test_export_takes_data_in_keras_forms(form, tmp_path):
    """representative_data / eval_data as a numpy batch (N, H, W, C) or (x, y) arrays, a tf.data
    dataset or an iterable of batches: the same calibration and the same report."""
    qat, images = _bias_free_qat()
    labels = np.arange(6) % 3
    forms = {"numpy": (images, (images, labels)),
             "dataset": (tf.data.Dataset.from_tensor_slices(images).batch(4),
                         tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)),
             "list": ([images[:4], images[4:]], [(images[:4], labels[:4]), (images[4:], labels[4:])]),
             "generator": ((b for b in [images[:4], images[4:]]), ((images, labels) for _ in range(1)))}
    rep, evaluation = forms[form]
    _, report = repq.export_tflite(qat, str(tmp_path / "m.tflite"), rep, evaluation)
    assert report["num_images"] == 6 and report["classes_covered"] == 3


def _strided_same_model(size):
    """Plain Keras convs with ``padding="same"`` and stride 2 (odd and even kernels), as in
    keras.applications models; ``size=None``: free spatial size."""
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(4, 2, strides=2, padding="same", activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize("size", [8, 9])
def test_keras_same_padding_with_stride_2_deploys_and_exports_exactly(size, tmp_path):
    """TF's asymmetric 'same' padding becomes the explicit padding TFLite performs: the deploy model
    equals the QAT model and the integer emulation is bit-exact with the TFLite model."""
    qat = quantize_model(_strided_same_model(size), 8, 8)
    images = np.random.default_rng(2).normal(size=(6, size, size, 1)).astype("float32")
    qat(images, training=True)
    np.testing.assert_allclose(repq.reparametrize(qat)(images, training=False), qat(images, training=False),
                               atol=1e-5)
    _, report = repq.export_tflite(qat, str(tmp_path / "m.tflite"), images, (images, np.arange(6) % 3))
    assert report["all_convs_integer"] and report["top1_agreement"] == 1.0
    assert report["integer_emulation"]["bit_exact_fraction"] == 1.0


def test_keras_same_padding_with_stride_2_needs_a_fixed_input_size():
    qat = quantize_model(_strided_same_model(None), 8, 8)
    qat(np.zeros((1, 8, 8, 1), np.float32), training=True)
    with pytest.raises(ValueError, match="depends on the input size.*fixed input shape"):
        repq.reparametrize(qat)


def test_export_refuses_non_finite_weights(tmp_path):
    """A diverged model (a NaN step) is refused by name before anything is written."""
    qat = _tiny_qat()
    step = next(v for v in qat.variables if "step" in v.path)
    step.assign(np.full(step.shape, np.nan, np.float32))
    for export in (lambda: repq.export_tflite(qat, str(tmp_path / "m.tflite"), np.zeros((2, 8, 8, 1), np.float32)),
                   lambda: repq.export_savedmodel(qat, str(tmp_path / "sm"))):
        with pytest.raises(ValueError, match=f"NaN or Inf in 1 variable.*{step.path}.*diverged"):
            export()
    assert os.listdir(tmp_path) == []


def test_cli_data_dir_reaches_the_dataset(tmp_path, capsys):
    """export.py --data_dir is where the tfds data is looked for (here: an empty folder, named in the error)."""
    from repq.cli import export
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    qat = quantize_model(keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))), 8, 8)
    qat(np.zeros((1, 32, 32, 3), np.float32), training=True)
    qat.save(str(tmp_path / "qat_model.keras"))
    data_dir = tmp_path / "tfds_data"
    data_dir.mkdir()
    code = export.main(["--checkpoint", str(tmp_path / "qat_model.keras"), "--output", str(tmp_path / "out"),
                        "--dataset", "cifar10", "--data_dir", str(data_dir)])
    err = capsys.readouterr().err
    assert code == 1 and f"not prepared in {data_dir}" in err, err
    assert not (tmp_path / "out").exists()


def test_mobilenetv2_depthwise_convs_export_bit_exact(tmp_path):
    """The zoo's MobileNetV2 (depthwise ConvBN blocks) exports integer-only: its depthwise convs become int8
    DEPTHWISE_CONV_2D with the learned per-channel steps, and repq.integer_predict equals LiteRT bit for bit."""
    fp = models.create_model("mobilenetv2", num_classes=10, input_shape=(32, 32, 3), width_multiplier=0.35)
    randomize_norms(fp)
    train, _ = get_dataset("mnist5k", "train", 16, limit=32)
    test, _ = get_dataset("mnist5k", "test", 16, limit=32)
    qat = quantize_model(fp, 4, 4)
    qat(next(iter(train))[0], training=True)
    rep = [x.numpy() for x, _ in train]
    _, report = repq.export_tflite(qat, str(tmp_path / "m.tflite"), rep, [(x.numpy(), y.numpy()) for x, y in test])
    ops = {row["op"] for row in report["graph"]["convs"]}
    assert "DEPTHWISE_CONV_2D" in ops, ops
    assert report["integer_only"] and report["all_convs_integer"] and report["weights_on_grid"], report["float_ops"]
    assert report["scales_match_learned"]
    assert report["integer_emulation"]["max_abs_diff_steps"] == 0.0, report["integer_emulation"]
