"""Public export API: ``export_savedmodel`` and ``export_tflite`` (with its fidelity report)."""

import os

import keras
import numpy as np
import tensorflow as tf

from repq.data.subsets import classes_covered
from repq.data.validate import check_images
from repq.export import convert, fidelity, integer_emulation, tflite_graph
from repq.qat import range_placement as ranges
from repq.export.errors import ExportError
from repq.export.files import atomic_directory
from repq.graph import output_layer
from repq.export.graph import export_model, graph_layers, is_quantized
from repq.outputs import atomic_file
from repq.qat.deploy import QuantizedConv2D, QuantizedDense
from repq.qat.quant_layers import QuantWrapper
from repq.qat.transform import range_quantizers
from repq.reparam import reparametrize


def _is_array(value):
    return isinstance(value, (np.ndarray, tf.Tensor))


def _batches(data, batch_size=32):
    """The forms Keras users pass data in -> a list of batches.

    A numpy array or tensor ``(N, H, W, C)`` is split into batches of ``batch_size`` along N; so
    is a tuple of arrays, read as Keras' ``(x, y[, sample_weight])``; a ``tf.data.Dataset`` or
    any other iterable yields the batches (each ``x`` or ``(x, y, ...)``).
    """
    if data is None:
        return []
    if _is_array(data):
        return [data[i:i + batch_size] for i in range(0, len(data), batch_size)]
    if isinstance(data, tuple) and data and all(_is_array(a) for a in data):
        return [tuple(a[i:i + batch_size] for a in data) for i in range(0, len(data[0]), batch_size)]
    return list(data)


def _x_batches(data, input_shape=None):
    """``x`` data in any form of :func:`_batches` -> list of float32 numpy x batches (checked)."""
    batches = [np.asarray(b[0] if isinstance(b, (tuple, list)) else b) for b in _batches(data)]
    for x in batches:
        check_images(x, input_shape)
    return [x.astype(np.float32) for x in batches]


def _deploy(model):
    has_rep = any(isinstance(l, QuantWrapper) or hasattr(l, "deploy_layer") for l in graph_layers(model))
    return reparametrize(model) if has_rep else model


def export_savedmodel(model, path, dataset=None):
    """Write the deploy form of ``model`` as a SavedModel (Keras ``ExportArchive``).

    Endpoints (batch and, for SR models, spatial size free):
      ``serve``: float32 input already preprocessed as in training (``repq.data``);
      ``serve_uint8``: uint8 pixels 0..255, preprocessed with
        ``repq.data.preprocess_images(x, dataset)`` (only when ``dataset`` is given).
    Returns ``path``. Nothing is left at ``path`` if writing fails.
    """
    from repq.checks import check_built_model, check_finite_weights

    check_built_model(model)
    check_finite_weights(model)
    deploy = _deploy(model)
    shape = (None, *deploy.inputs[0].shape[1:])
    archive = keras.export.ExportArchive()
    archive.track(deploy)
    archive.add_endpoint("serve", lambda x: deploy(x, training=False),
                         input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    if dataset is not None:
        from repq.data import preprocess_images
        archive.add_endpoint("serve_uint8", lambda x: deploy(preprocess_images(x, dataset), training=False),
                             input_signature=[tf.TensorSpec(shape, tf.uint8, name="pixels")])
    with atomic_directory(path) as tmp:
        archive.write_out(tmp, verbose=False)
    return path


def _write_bytes(path, data):
    """Write ``data`` to the file ``path`` (``repq.outputs.atomic_file``: atomically, mode
    ``0666 & ~umask``; a regular file is replaced, a directory or special file refused)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_file(path, write)


def export_graph(model, representative_data=None):
    """QAT/deploy model -> (export graph, its output step): the Keras model that is converted.

    ``representative_data`` (model inputs: see ``export_tflite``) sets the 8-bit ranges of tensors without
    learned quantization or a tracked range (a QAT model from ``quantize_model``
    has none once trained or calibrated); required when the model has such tensors.
    """
    from repq.checks import check_finite_weights

    check_finite_weights(model)
    graph, calibrated = ranges.with_range_quantizers(export_model(model))
    calibrated += [q for q in range_quantizers(graph) if q not in calibrated and float(q.initialized.numpy()) <= 0]
    batches = _x_batches(representative_data, model.inputs[0].shape[1:])
    if calibrated and not batches:
        raise ExportError(f"{len(calibrated)} tensors (e.g. the model output) have no learned quantization; "
                          "pass representative_data (a few batches of model inputs) to calibrate them.")
    ranges.calibrate(graph, calibrated, batches)
    step = output_layer(graph).step()  # the output's RangeFakeQuant
    return graph, step


def integer_tflite(model, representative_data=None, float_io=False, input_shape=None):
    """QAT/deploy model -> (integer TFLite bytes, export graph, its output step); see ``export_graph``."""
    graph, step = export_graph(model, representative_data)
    return convert.to_tflite(graph, input_shape, integer=True, float_io=float_io), graph, step


def integer_predict(model, x, representative_data=None, batch_size=32, graph=None):
    """The QAT model's outputs computed in integers exactly as the deployed TFLite model computes them.

    Runs the export graph of ``model`` (same learned steps, ranges, merged kernels)
    with the integer arithmetic of LiteRT's default CPU runtime
    (:mod:`repq.export.integer_emulation`), without converting anything: float
    images ``x`` (N, H, W, C) in the training preprocessing -> float outputs
    (dequantized int8). ``graph``: a prebuilt ``export_graph(model)[0]``, or an
    ``integer_emulation.Program`` of it to reuse across calls.
    """
    from repq.checks import check_built_model

    check_built_model(model)
    x = np.asarray(x)
    check_images(x, model.inputs[0].shape[1:])
    if graph is None:
        graph = export_graph(model, _x_batches(representative_data))[0]
    program = graph if isinstance(graph, integer_emulation.Program) else integer_emulation.Program(graph)
    return np.concatenate([program(x[i:i + batch_size].astype(np.float32)).dequantize()
                           for i in range(0, len(x), batch_size)])


def float_tflite(model, input_shape=None):
    """Float32 TFLite bytes of ``model`` as it is (no merging, no quantization)."""
    return convert.to_tflite(model, input_shape, integer=False)


def export_tflite(model, path, representative_data=None, eval_data=None, float_io=False,
                  input_shape=None, sr_scale=None, log=None):
    """Write a full-integer .tflite of a QAT model and a fidelity report next to it.

    Args:
      model: QAT model (``repq.quantize_model``/train.py, or ``repq.ptq.quantize_ptq``/ptq.py, which
        reconstruct on the same wrappers) or its ``repq.reparametrize`` form.
      path: the .tflite file to write; the report goes to ``<path stem>_fidelity.{json,md}``.
      representative_data: model inputs for the tensors without learned quantization: a numpy
        batch ``(N, H, W, C)``, a ``tf.data.Dataset`` or an iterable of batches (``x`` or ``(x, y)``).
      eval_data: data for the report in the same forms, with labels (classification) or HR
        images (SR): ``(x, y)`` arrays, a dataset or an iterable of ``(x, y)`` batches;
        default: the representative x, without accuracy.
      float_io: float32 input/output instead of int8.
      input_shape: ``(H, W, C)`` for models with free spatial size (SR).
      sr_scale: upscaling factor when ``model`` is super-resolution (report uses PSNR).
      log: optional ``log(message)`` called with a line before each long step (conversion,
        fidelity); the CLI prints them as stage lines.
    Returns ``(path, fidelity_report)``; with labels, the report's ``classes_covered`` says how
    many of the model's ``num_classes`` classes the evaluated images span.
    """
    from repq.checks import check_built_model

    check_built_model(model)
    log = log or (lambda message: None)
    if not is_quantized(model):
        raise ExportError(f"model {model.name!r} has no quantizers: run train.py or repq.qat.quantize_model "
                          "first, or use float_tflite for a float model.")
    data, shape = _eval_arrays(eval_data, representative_data, input_shape, model.inputs[0].shape[1:])
    log("converting to integer TFLite (calibrating the unlearned 8-bit ranges first)")
    model_bytes, graph, out_step = integer_tflite(model, representative_data, float_io, shape)
    _write_bytes(path, model_bytes)
    x, y = data
    log(f"fidelity: {len(x)} images through Keras, LiteRT (default and builtin kernels) and the "
        "integer-exact emulation")
    reference = np.concatenate([np.asarray(model(x[i:i + 32], training=False)) for i in range(0, len(x), 32)])
    labels, hr = (None, y) if sr_scale else (y, None)
    tflite_out = fidelity.run_tflite(tflite_graph.interpreter(model_bytes, default_delegates=True), x)
    report = dict(model=model.name, tflite=os.path.basename(path), size_bytes=os.path.getsize(path),
                  io="float32" if float_io else "int8", runtime="LiteRT default CPU runtime (XNNPACK)",
                  **fidelity.compare(reference, tflite_out, out_step, labels, sr_scale, hr))
    if labels is not None:
        report.update(num_classes=int(reference.shape[-1]), classes_covered=classes_covered(labels))
    emulated = integer_predict(model, x, graph=graph)
    report["integer_emulation"] = fidelity.compare(emulated, tflite_out, out_step, labels, sr_scale, hr)
    report["integer_emulation"]["bit_exact_fraction"] = float(np.mean(np.abs(emulated - tflite_out) < out_step / 2))
    builtin = tflite_graph.interpreter(model_bytes)
    report["builtin_kernels"] = fidelity.compare(reference, fidelity.run_tflite(builtin, x), out_step, labels,
                                                 sr_scale, hr)
    report["ops"] = tflite_graph.op_names(builtin)
    report["float_ops"] = tflite_graph.float_ops(builtin)
    report["integer_only"] = not report["float_ops"]
    quant_layers = [l for l in graph_layers(graph) if isinstance(l, (QuantizedConv2D, QuantizedDense))]
    report["graph"] = fidelity.check_graph(builtin, quant_layers)
    for key in ("all_convs_integer", "weights_on_grid", "scales_match_learned"):
        report[key] = report["graph"][key]
    fidelity.write_report(report, os.path.splitext(path)[0] + "_fidelity")
    return path, report


def _eval_arrays(eval_data, representative_data, input_shape, model_shape):
    """``((x, y or None), input_shape)`` for the report from the given batches."""
    if eval_data is not None:
        batches = [b if isinstance(b, (tuple, list)) else (b, None) for b in _batches(eval_data)]
        x = np.concatenate(_x_batches([b[0] for b in batches], model_shape))
        y = None if batches[0][1] is None else np.concatenate([np.asarray(b[1]) for b in batches])
        if y is not None and y.ndim == 4 and (y.shape[0] != x.shape[0] or y.shape[1] % x.shape[1]
                                              or y.shape[2] % x.shape[2]):
            raise ValueError(f"eval HR images have shape {y.shape}, not a multiple of the LR images' "
                             f"{x.shape} (pass (LR, HR) pairs of one upscaling factor).")
    else:
        x, y = np.concatenate(_x_batches(representative_data)), None
    return (x, y), input_shape or (tuple(x.shape[1:]) if x.size else None)


def export_all(model, output_dir, representative_data, eval_data=None, formats=("savedmodel", "tflite"),
               float_io=False, dataset=None, sr_scale=None, fp_model=None, log=None):
    """The CLI's bundle, written atomically into ``output_dir``; returns the fidelity report (or None).

    ``output_dir`` gets ``saved_model/``, ``model_int8.tflite`` + ``model_int8_fidelity.{json,md}``,
    and with ``fp_model`` the merged float ``fp_merged.tflite`` / ``fp_saved_model/``.
    ``log``: optional ``log(message)`` called before each long step (see :func:`export_tflite`).
    """
    report = None
    say = log or (lambda message: None)
    with atomic_directory(output_dir) as tmp:
        if "savedmodel" in formats:
            say("writing the SavedModel (deploy form: rep blocks merged)")
            export_savedmodel(model, os.path.join(tmp, "saved_model"), dataset)
            if fp_model is not None:
                say("writing the FP SavedModel")
                export_savedmodel(fp_model, os.path.join(tmp, "fp_saved_model"), dataset)
        if "tflite" in formats:
            _, report = export_tflite(model, os.path.join(tmp, "model_int8.tflite"), representative_data,
                                      eval_data, float_io, sr_scale=sr_scale, log=log)
            if fp_model is not None:
                say("converting the merged FP model to float TFLite")
                x = _x_batches(representative_data)[0]
                _write_bytes(os.path.join(tmp, "fp_merged.tflite"),
                             float_tflite(reparametrize(fp_model), x.shape[1:]))
    return report
