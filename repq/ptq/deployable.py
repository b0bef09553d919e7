"""A PTQ result as a QAT-format model, which ``repq.reparametrize`` and the exports take as it is.

PTQ's quantizers sit on QAT's grids (symmetric signed weights per output channel, activations
per tensor with zero point 0, unsigned behind a ReLU), so a PTQ model is carried over exactly:
the FP layers are rebuilt from the PTQ model, :func:`repq.quantize_model` wraps them with
8-bit first/last layers (PTQ's edge rule), and every wrapper receives the PTQ kernel and the
PTQ steps. What differs from the PTQ model is only what the integer model adds (the
deployment contract, docs/export.md): biases on the int32 grid and, with ``range_quantizers``,
8-bit ranges on the tensors the integer model holds in int8 that PTQ leaves float (e.g. a
residual sum). Those ranges are calibrated on ``calib_data``.
"""

import keras

from repq.layers.padded_conv import PaddedConv2D
from repq.ptq.graph import Graph, run_ops
from repq.ptq.qmodel import ActQuant, QuantDense, QuantWeightLayer
from repq.qat.rules import PrecisionRule
from repq.graph import copy_layer


def _float_layer(layer):
    """The FP layer a PTQ weight layer quantizes (same name, op arguments and activation)."""
    common = dict(name=layer.name, activation=keras.activations.serialize(layer.activation))
    if isinstance(layer, QuantDense):
        return keras.layers.Dense(layer.units, **common)
    kh, kw = layer.kernel_shape[:2]
    if layer.padding == "same":
        return keras.layers.Conv2D(layer.units, (kh, kw), strides=layer.strides, padding="same",
                                   groups=layer.groups, **common)
    return PaddedConv2D(layer.units, (kh, kw), pad=layer.pad, strides=layer.strides, groups=layer.groups, **common)


def float_model(ptq_model):
    """The FP graph of a PTQ model: its weight layers as Conv2D/PaddedConv2D/Dense holding the PTQ
    kernels (hard-rounded, for AdaRound methods), its activation quantizers left out."""
    graph = Graph(ptq_model, may_hold_weights=lambda l: isinstance(l, (QuantWeightLayer, ActQuant)))
    inputs = [keras.Input(t.shape[1:], name=t.name) for t in ptq_model.inputs]
    values = dict(zip(graph.input_ids, inputs))
    rebuilt = {}

    def layer_for(op):
        if isinstance(op.layer, ActQuant):
            return lambda x: x
        rebuilt[op.index] = _float_layer(op.layer) if isinstance(op.layer, QuantWeightLayer) else copy_layer(op.layer)
        return rebuilt[op.index]

    run_ops(graph.ops, values, layer_for)
    outputs = [values[t] for t in graph.output_ids]
    plain = keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
                        name=ptq_model.name.removesuffix("_ptq"))
    for op in graph.ops:
        if isinstance(op.layer, QuantWeightLayer):
            rebuilt[op.index].set_weights([keras.ops.convert_to_numpy(op.layer.kernel),
                                           keras.ops.convert_to_numpy(op.layer.bias)])
    return plain


def is_ptq_model(model):
    """Whether ``model`` holds PTQ quantized layers (``repq.ptq.quantize_ptq``'s first result)."""
    return any(isinstance(l, QuantWeightLayer) for l in model.layers)


def deployable_model(ptq_model, calib_data=None, range_quantizers=True):
    """The QAT-format twin of a PTQ model (``repq.quantize_ptq``'s first result).

    Args:
      ptq_model: the quantized model of :func:`repq.ptq.quantize_ptq` (or one loaded from ``.keras``).
      calib_data: a batch of inputs ``(N, ...)`` for the 8-bit tensor ranges the integer model adds;
        required when ``range_quantizers`` (the default).
      range_quantizers: add those ranges (needed by the int8 export); False gives the PTQ
        computation alone (equal to ``ptq_model`` up to the int32 bias grid).

    Returns:
      a model from :func:`repq.quantize_model`: ``repq.reparametrize``, ``repq.export_tflite`` and
      ``repq.integer_predict`` take it.
    """
    from repq.qat.calibrate import calibrate
    from repq.qat.transform import quantize_model, quantized_layers

    ptq_layers = {l.name: l for l in ptq_model.layers if isinstance(l, QuantWeightLayer)}
    if not ptq_layers:
        raise ValueError(f"model {ptq_model.name!r} is not a PTQ model (no repq.ptq quantized layers); pass the "
                         "first result of repq.ptq.quantize_ptq.")
    if range_quantizers and calib_data is None:
        raise ValueError("deployable_model needs calib_data (a batch of inputs) to calibrate the 8-bit tensor "
                         "ranges of the integer model; pass e.g. the PTQ calibration images.")
    acts = {l.name: l for l in ptq_model.layers if isinstance(l, ActQuant)}
    weight_bits = min(l.bits for l in ptq_layers.values())
    act_bits = min(l.bits for l in acts.values()) if acts else 8
    qat = quantize_model(float_model(ptq_model), weight_bits, act_bits, bn="repq", rule=PrecisionRule(),
                         range_quantizers=range_quantizers)
    for wrapper in quantized_layers(qat):
        source = ptq_layers[wrapper.name]
        act = acts.get(source.input_quantizer)
        _check_same_grid(wrapper, source, act)
        wrapper.weight_quantizer.step.assign(source.scale)
        wrapper.weight_quantizer.initialized.assign(1.0)
        if act is not None:
            wrapper.input_quantizer.step.assign(act.positive_step())
            wrapper.input_quantizer.initialized.assign(1.0)
    if range_quantizers:
        calibrate(qat, calib_data)
    return qat


def _check_same_grid(wrapper, source, act):
    """Raise ValueError unless the QAT wrapper quantizes exactly as the PTQ layer and its input did."""
    got = (wrapper.weight_bits, wrapper.act_bits, wrapper.input_signed if act is not None else None)
    want = (source.bits, act.bits if act is not None else None, act.signed if act is not None else None)
    if got != want:
        raise ValueError(f"layer {wrapper.name}: the QAT wrapper quantizes with (weight bits, input bits, input "
                         f"signed) = {got}, the PTQ model with {want}; this graph's first/last-layer or sign rule "
                         "differs between PTQ and QAT, so the PTQ model cannot be carried over exactly.")
