"""Fake-quant ops on the tensors that have no learned quantization, and their calibration.

The TFLite converter needs an int8 range for every tensor. Conv/dense inputs and
kernels carry the learned LSQ steps (their fake-quant ops); the other tensors
(conv outputs feeding Add/PReLU/pooling, residual sums, the model output) get a
:class:`RangeFakeQuant` whose 8-bit range is the min/max observed on a
representative dataset. A tensor that feeds a quantized conv AND other layers
gets the learned step of that conv (8-bit container range), so the conv still
sees exactly its QAT input.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from repq.qat.deploy import QuantizedConv2D, QuantizedDense
from repq.quantizers import integer_range

# Layers that only move or select values: TFLite gives their output the input's scale.
PASS_THROUGH = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
                keras.layers.ZeroPadding2D, keras.layers.MaxPooling2D)


@keras.saving.register_keras_serializable(package="repq")
class RangeFakeQuant(keras.layers.Layer):
    """8-bit ``fake_quant_with_min_max_vars(x, lo, hi)``; while ``observing``, records min/max instead.

    Args:
      lo, hi: the range in float units (``lo <= 0 <= hi``); calibration widens it.
    """

    def __init__(self, lo=0.0, hi=0.0, **kwargs):
        super().__init__(**kwargs)
        self.init_range = (float(lo), float(hi))
        self.observing = False

    def build(self, input_shape):
        self.lo = self.add_weight(name="lo", shape=(), initializer=keras.initializers.Constant(
            self.init_range[0]), trainable=False)
        self.hi = self.add_weight(name="hi", shape=(), initializer=keras.initializers.Constant(
            self.init_range[1]), trainable=False)

    def call(self, x):
        if self.observing:
            self.lo.assign(ops.minimum(self.lo, ops.min(x)))
            self.hi.assign(ops.maximum(self.hi, ops.max(x)))
            return x
        return tf.quantization.fake_quant_with_min_max_vars(x, self.lo, self.hi, num_bits=8)

    def get_config(self):
        lo, hi = ((float(self.lo.numpy()), float(self.hi.numpy())) if self.built else self.init_range)
        return {**super().get_config(), "lo": lo, "hi": hi}


def _learned_range(conv):
    """The 8-bit container range ``(qmin8*s, qmax8*s)`` of a quantized conv's input."""
    qmin8, qmax8 = integer_range(8, conv.input_signed)
    step = float(conv.input_step.numpy())
    return qmin8 * step, qmax8 * step


def _has_input_quant(layer):
    return isinstance(layer, (QuantizedConv2D, QuantizedDense)) and layer.act_bits is not None


def _flat_steps(model, alias, steps):
    """Append ``(layer, node, output keys)`` of ``model`` to ``steps``, nested models inlined.

    ``alias`` maps ``id(keras_tensor)`` of nested-model inputs/outputs to the key of the
    outer tensor they stand for.
    """
    functional = getattr(model, "_functional", None) or model
    key = lambda t: alias.get(id(t), id(t))  # noqa: E731
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            layer = node.operation
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if isinstance(layer, keras.Model):
                inner = getattr(layer, "_functional", None) or layer
                for t_inner, t_outer in zip(keras.tree.flatten(inner.inputs), node.input_tensors):
                    alias[id(t_inner)] = key(t_outer)
                _flat_steps(layer, alias, steps)
                for t_outer, t_inner in zip(node.outputs, keras.tree.flatten(inner.outputs)):
                    alias[id(t_outer)] = key(t_inner)
                continue
            steps.append((layer, node, [key(t) for t in node.input_tensors], [id(t) for t in node.outputs]))
    return steps


def with_range_quantizers(model):
    """A flat copy of deploy ``model`` with a fake-quant on every tensor that lacks one.

    Returns ``(model, calibrated)``: the new functional model (it shares layers with
    ``model``) and the :class:`RangeFakeQuant` layers that need calibration.
    """
    alias = {}
    steps = _flat_steps(model, alias, [])
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
    calibrated = []

    def quantize(key, tensor):
        users = consumers.get(key, [])
        quantized = [u for u in users if _has_input_quant(u)]
        if users and len(quantized) == len(users) and key not in out_keys:
            return tensor
        if users and all(isinstance(u, PASS_THROUGH) for u in users) and key not in out_keys:
            return tensor
        if quantized:
            return RangeFakeQuant(*_learned_range(quantized[0]))(tensor)
        fq = RangeFakeQuant()
        calibrated.append(fq)
        return fq(tensor)

    inputs = [keras.Input(batch_shape=t.shape, name=t.name, dtype=t.dtype) for t in model.inputs]
    tensors = {id(t): quantize(id(t), new) for t, new in zip(model.inputs, inputs)}
    for layer, node, _, out_keys_of_layer in steps:
        args = keras.tree.map_structure(
            lambda t: tensors[key(t)] if isinstance(t, keras.KerasTensor) else t,
            (node.arguments.args, node.arguments.kwargs))
        outputs = keras.tree.flatten(layer(*args[0], **args[1]))
        for k, t in zip(out_keys_of_layer, outputs):
            tensors[k] = quantize(k, t)
    outputs = [tensors[key(t)] for t in keras.tree.flatten(model.outputs)]
    return keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name=model.name), calibrated


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
