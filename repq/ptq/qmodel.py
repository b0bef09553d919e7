"""The quantized model PTQ reconstructs: ``repq.quantize_model``'s wrappers on the merged FP model.

``QuantModel(fp_model, weight_bits, act_bits)`` quantizes a reparametrized functional model with
the QAT transform (:func:`repq.quantize_model` with ``PrecisionRule()``: 8-bit first and last
layers and inputs, PTQ's edge rule), so PTQ reconstructs exactly the computation that is deployed:

* every Conv2D / Dense is a QAT wrapper: symmetric per-output-channel weights on the signed grid
  (zero point 0, the TFLite int8 rule; MSE-searched steps), its input quantized per tensor on
  QAT's grid (unsigned behind a ReLU, signed otherwise) with a learnable step;
* the tensors the integer model holds in int8 without a learned step (e.g. a residual sum, the
  output) carry 8-bit ranges (:class:`repq.qat.range_quant.RangeFakeQuant`), set by :meth:`calibrate`,
  and a tensor read by a wrapper and by other layers is given to the others on the wrapper's grid
  (:class:`repq.qat.range_quant.LearnedStepContainer`).

The PTQ result is an ordinary QAT-format model: ``repq.reparametrize``, the exports and
``repq.integer_predict`` take it as it is, and QAT can fine-tune it. Reconstruction
(:mod:`repq.ptq.unit_step`) gives the quantizers of workspace copies AdaRound's ``rounding`` and
QDrop's ``drop``; the model itself rounds to nearest.
"""

import keras
import numpy as np
import tensorflow as tf

from repq.graph import copy_layer
from repq.ptq.graph import Graph, run_ops
from repq.observers import EMAStepObserver
from repq.qat.quant_layers import QuantWrapper
from repq.qat.range_quant import LearnedStepContainer, RangeFakeQuant
from repq.qat.rules import PrecisionRule
from repq.quantizers import integer_range


def _identity(x, **kwargs):
    return x


# Layers that only fake-quantize a tensor (8-bit ranges the integer model needs): identities in FP.
TENSOR_QUANTIZERS = (RangeFakeQuant, LearnedStepContainer)


def _is_quantizer_layer(layer):
    return isinstance(layer, (QuantWrapper, *TENSOR_QUANTIZERS))


class QuantModel:
    """A reparametrized FP model quantized by :func:`repq.quantize_model`, and its FP mirror.

    Tensor ids are those of :class:`Graph` over the quantized model; the FP mirror computes the FP
    value of every tensor (a copy of each wrapper's float layer, tensor quantizers left out).

    Attributes:
      model: the quantized ``keras.Model`` (same inputs/outputs as ``fp_model``).
      graph: :class:`Graph` of ``model``; its weight ops are the wrappers.
      layers: op index -> layer of ``model``.
      weight_layers: op index -> :class:`repq.qat.quant_layers.QuantWrapper`.
      edge_ops: op indices of the 8-bit first and last weight layers.
      fp_layers: op index -> the FP copy of a wrapper's float layer.
      fp_tensors: tensor id -> symbolic FP tensor (the mirror's).
    """

    def __init__(self, fp_model, weight_bits, act_bits):
        from repq.qat.transform import quantize_model

        integer_range(weight_bits, True, "weight_bits"), integer_range(act_bits, False, "act_bits")
        fp_graph = Graph(fp_model)  # clear errors: layers PTQ cannot quantize, several calls, dilation
        if not any(op.has_weights for op in fp_graph.ops):
            raise TypeError(f"model {fp_model.name!r} has no Conv2D/Dense layer to quantize.")
        self.model = quantize_model(fp_model, weight_bits, act_bits, bn="repq", rule=PrecisionRule())
        self.graph = g = Graph(self.model, may_hold_weights=_is_quantizer_layer)
        self.layers = {op.index: op.layer for op in g.ops}
        self.weight_layers = {op.index: op.layer for op in g.ops if op.has_weights}
        weight_ops = [op for op in g.ops if op.has_weights]
        first = {op.index for op in weight_ops if set(op.inputs) & set(g.input_ids)} or {weight_ops[0].index}
        self.edge_ops = first | {weight_ops[-1].index}
        # reconstruction rewrites the wrapped kernels: the FP mirror keeps copies of the FP layers
        self.fp_layers = {i: copy_layer(layer.layer) for i, layer in self.weight_layers.items()}
        self.fp_tensors = dict(zip(g.input_ids, self.model.inputs))
        run_ops(g.ops, self.fp_tensors, self.fp_layer)

    def fp_layer(self, op):
        """The FP computation of ``op``: a copy of a wrapper's float layer as it was before PTQ, identity
        for a tensor quantizer, else the layer itself (weight-free)."""
        if op.index in self.fp_layers:
            return self.fp_layers[op.index]
        return _identity if isinstance(op.layer, TENSOR_QUANTIZERS) else op.layer

    # ------------------------------------------------------------ calibration
    def calibrate(self, batches, verbose=0):
        """Input steps from observers on the FP activations, then the 8-bit ranges; weights keep the
        MSE-searched steps the wrappers got when built.

        Each wrapper's input step: EMA over ``batches`` of the per-batch MSE step of its FP input
        (MQBench's ``EMAMSEObserver``; quantization off, as MQBench calibrates). The ranges
        (:func:`repq.qat.calibrate`) then see all calibration images at once through the quantized
        model. ``batches``: list of numpy input batches; ``verbose``: 1 shows a progress bar.
        """
        from repq.qat.calibrate import calibrate

        readers = [(op.inputs[0], layer.input_quantizer) for op in self.graph.ops if op.has_weights
                   for layer in [op.layer] if layer.input_quantizer is not None]
        # one observer per tensor and grid: readers of one tensor on the same grid get the same step
        observers = {key: EMAStepObserver(key[1], key[2])
                     for key in dict.fromkeys((t, q.qmin, q.qmax) for t, q in readers)}
        tids = list(dict.fromkeys(t for t, _ in readers))
        probe = self.fp_submodel(tids)
        bar = keras.utils.Progbar(len(batches) + 1, verbose=verbose, unit_name="step")
        for x in batches:
            values = dict(zip(tids, probe(x)))
            for (t, _, _), observer in observers.items():
                observer.update(keras.ops.convert_to_numpy(values[t]))
            bar.add(1)
        for t, quantizer in readers:
            quantizer.step.assign(observers[t, quantizer.qmin, quantizer.qmax].step())
            quantizer.initialized.assign(1.0)
        calibrate(self.model, np.concatenate(batches))
        bar.add(1)

    def fp_submodel(self, tids):
        """``f(x) -> [FP value of each tensor id]`` (model inputs pass through)."""
        return self._submodel([self.fp_tensors[t] for t in tids], tids)

    def quant_submodel(self, tids):
        """``f(x) -> [quantized model's value of each tensor id]`` (model inputs pass through)."""
        return self._submodel([self.graph.tensors[t] for t in tids], tids)

    def _submodel(self, tensors, tids):
        inputs = set(self.graph.input_ids)
        outs = [t for t, tid in zip(tensors, tids) if tid not in inputs]
        model_in = self.model.inputs[0] if len(self.model.inputs) == 1 else self.model.inputs
        sub = keras.Model(model_in, outs) if outs else None
        fn = tf.function(lambda x: sub(x, training=False), autograph=False) if sub else None

        def run(x):
            got = fn(x) if fn else []
            got = list(got) if isinstance(got, (list, tuple)) else [got]
            return [x if tid in inputs else got.pop(0) for tid in tids]

        return run

    # ------------------------------------------------------------ execution
    def run_ops(self, ops_, values):
        """Run ``ops_`` of the quantized model on ``values`` (tensor id -> value), in place."""
        return run_ops(ops_, values, lambda op: self.layers[op.index])
