"""Where a model needs 8-bit range fake-quants, and their calibration.

The TFLite converter needs an int8 range for every tensor. Conv/dense inputs and
kernels carry the learned LSQ steps (their fake-quant ops); the other tensors
(conv outputs feeding Add/PReLU/pooling, residual sums, the model output) need a
:class:`~repq.qat.range_quant.RangeFakeQuant`. ``repq.quantize_model`` places
them in the QAT model (``mode="qat"``: ranges tracked in training), so the export
finds none missing; for models without them the export places them
(``mode="export"``) with the min/max observed on a representative dataset, and
a tensor that feeds a quantized conv AND other layers gets the learned step of
that conv (8-bit container range), so the conv still sees exactly its QAT input.
A pooling output (GAP/average pooling) that feeds quantized convs gets their
learned step explicitly in the export: otherwise the converter keeps MEAN's output
in its input scale and adds a requantization, a second rounding the QAT model
does not have (with many exact ties: a mean of 16 integers ends in .5 often).
A tensor read only by quantized convs with different sub-8-bit learned steps (a block output
read by the next conv1 and a projection shortcut, once trained) is stored explicitly in the
first reader's step, and the others requantize it (TFLite's QUANTIZE): left to the
converter, which reader's scale it stores depends on an op order the integer emulation
cannot see (keras.applications' ResNet50 defines the shortcut before conv1, the zoo after).
"""

import itertools
import re

import keras
import numpy as np

from repq.graph import call_nodes, functional_model
from repq.qat.deploy import QuantizedConv2D
from repq.qat.quant_layers import QuantWrapper
from repq.qat.range_quant import LearnedStepContainer, RangeFakeQuant, container_range, learned_input_step

# Layers that only move or select values: TFLite gives their output the input's scale.
PASS_THROUGH = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
                keras.layers.ZeroPadding2D, keras.layers.MaxPooling2D)
# Producers TFLite fuses a following ReLU into (its output is then only stored after the ReLU).
FUSES_RELU = (keras.layers.Add, keras.layers.Conv2D, QuantizedConv2D, QuantWrapper)
# Layers whose int8 output TFLite keeps in the scale of their input (MEAN) unless told otherwise.
SAME_SCALE = (keras.layers.GlobalAveragePooling2D, keras.layers.AveragePooling2D)
MODES = ("qat", "export")


def _learned_range(layer):
    """The 8-bit container range of a quantized layer's learned input step, as floats."""
    return tuple(float(v) for v in container_range(layer))


def _is_relu(layer):
    """A ReLU layer (plain, or ``Activation("relu")``) without threshold, slope or cap."""
    config = layer.get_config()
    if isinstance(layer, keras.layers.Activation):
        return config.get("activation") == "relu"
    return (config.get("max_value") is None and not config.get("negative_slope")
            and not config.get("threshold"))


def _readers_disagree(readers):
    """Whether quantized ``readers`` of one tensor, all with sub-8-bit inputs, have different learned steps.

    Measured with the converter: such a tensor is stored in one reader's scale chosen by an op order the
    integer emulation cannot see, so the export stores it explicitly (see the module docstring). With
    8-bit readers an explicit storage makes the converter add a RELU and a QUANTIZE (two roundings); left
    alone it stores the tensor in the last reader's scale, which the emulation follows.
    """
    return (len({_learned_range(u) for u in readers}) > 1
            and all((getattr(u, "act_bits", None) or 8) < 8 for u in readers))


def _has_input_quant(layer):
    """Whether ``layer`` quantizes its input with a learned step (QAT wrapper or deploy layer)."""
    return learned_input_step(layer) is not None


def flat_steps(model, alias, steps):
    """Append ``(layer, node, output keys)`` of ``model`` to ``steps``, nested models inlined.

    ``alias`` maps ``id(keras_tensor)`` of nested-model inputs/outputs to the key of the
    outer tensor they stand for.
    """
    functional = getattr(model, "_functional", None) or model
    key = lambda t: alias.get(id(t), id(t))  # noqa: E731
    for node in call_nodes(functional):
        layer = node.operation
        if isinstance(layer, keras.Model):
            inner = getattr(layer, "_functional", None) or layer
            for t_inner, t_outer in zip(keras.tree.flatten(inner.inputs), node.input_tensors):
                alias[id(t_inner)] = key(t_outer)
            flat_steps(layer, alias, steps)
            for t_outer, t_inner in zip(node.outputs, keras.tree.flatten(inner.outputs)):
                alias[id(t_outer)] = key(t_inner)
            continue
        steps.append((layer, node, [key(t) for t in node.input_tensors], [id(t) for t in node.outputs]))
    return steps


def with_range_quantizers(model, mode="export"):
    """A flat copy of ``model`` with a :class:`RangeFakeQuant` on every tensor that lacks one.

    Args:
      model: a QAT model (``mode="qat"``) or a deploy model (``mode="export"``).
      mode: "qat" puts new, range-tracking quantizers on tensors without a learned
        step, and a :class:`LearnedStepContainer` on the edges from a tensor that
        feeds a quantized conv to its other consumers; "export" gives such
        tensors the conv's learned step as a fixed range.
    Returns ``(model, new)``: the new functional model (it shares layers with
    ``model``) and the new :class:`RangeFakeQuant` layers whose range is still empty.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    alias = {}
    steps = flat_steps(model, alias, [])
    seen = set()
    for i, (layer, *_rest) in enumerate(steps):
        if layer.name in seen:  # nested models may repeat names (e.g. every ECB's "prelu")
            layer.name = f"{layer.name}_{i}"
        seen.add(layer.name)
    key = lambda t: alias.get(id(t), id(t))  # noqa: E731
    consumers = {}
    for layer, _, in_keys, _ in steps:
        for k in in_keys:
            consumers.setdefault(k, []).append(layer)
    out_keys = {key(t) for t in keras.tree.flatten(model.outputs)}
    new = []

    def fresh(cls, *args):
        """``cls(*args)`` named uniquely in this graph (a loaded model's layers already hold the
        default names, e.g. ``range_fake_quant``, which a new layer of this process would repeat)."""
        base = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()  # RangeFakeQuant -> range_fake_quant
        name = next(f"{base}_{i}" for i in itertools.count() if f"{base}_{i}" not in seen)
        seen.add(name)
        return cls(*args, name=name)

    def quantize(k, tensor, producer):
        """``(tensor for layers with a learned input step, tensor for the other consumers)``."""
        users = consumers.get(k, [])
        if isinstance(producer, (RangeFakeQuant, LearnedStepContainer)) or (
                users and all(isinstance(u, (RangeFakeQuant, LearnedStepContainer)) for u in users)):
            return tensor, tensor
        if (k not in out_keys and isinstance(producer, FUSES_RELU) and len(users) == 1
                and isinstance(users[0], (keras.layers.ReLU, keras.layers.Activation)) and _is_relu(users[0])):
            return tensor, tensor  # fused into the producer: the ReLU output is the stored tensor
        quantized = [u for u in users if _has_input_quant(u)]
        if k not in out_keys and users and len(quantized) == len(users):
            if mode == "export" and (isinstance(producer, SAME_SCALE) or _readers_disagree(quantized)):
                tensor = fresh(RangeFakeQuant, *_learned_range(quantized[0]))(tensor)
            return tensor, tensor
        if k not in out_keys and users and all(isinstance(u, PASS_THROUGH) for u in users):
            return tensor, tensor
        if quantized and mode == "export":
            tensor = fresh(RangeFakeQuant, *_learned_range(quantized[0]))(tensor)
            return tensor, tensor
        if quantized and k not in out_keys:  # qat: the others read the conv's learned step
            return tensor, fresh(LearnedStepContainer, quantized[0].name)(tensor)
        fq = fresh(RangeFakeQuant)
        new.append(fq)
        tensor = fq(tensor)
        return tensor, tensor

    inputs = [keras.Input(batch_shape=t.shape, name=t.name, dtype=t.dtype) for t in model.inputs]
    tensors, others = {}, {}  # key -> tensor read by layers with / without a learned input step
    for t, new_t in zip(model.inputs, inputs):
        tensors[id(t)], others[id(t)] = quantize(id(t), new_t, None)
    for layer, node, _, out_keys_of_layer in steps:
        source = tensors if _has_input_quant(layer) else others
        args = keras.tree.map_structure(
            lambda t: source[key(t)] if isinstance(t, keras.KerasTensor) else t,
            (node.arguments.args, node.arguments.kwargs))
        outputs = keras.tree.flatten(layer(*args[0], **args[1]))
        for k, t in zip(out_keys_of_layer, outputs):
            tensors[k], others[k] = quantize(k, t, layer)
    outputs = [tensors[key(t)] for t in keras.tree.flatten(model.outputs)]
    return functional_model(inputs, outputs, model.name), new


def calibrate(model, quantizers, batches):
    """Set each ``RangeFakeQuant`` in ``quantizers`` to the min/max seen over ``batches`` (numpy x)."""
    for q in quantizers:
        q.observing = True
    try:
        for x in batches:
            model(np.asarray(x, np.float32), training=False)
    finally:
        for q in quantizers:
            q.observing = False
