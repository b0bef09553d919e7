"""The quantized model: AdaRound weight quantizers and activation quantizers on a plain model.

``QuantModel(fp_model, weight_bits, act_bits)`` rebuilds a reparametrized functional model with

* every Conv2D / Dense replaced by :class:`QuantConv2D` / :class:`QuantDense`: symmetric
  per-output-channel weights on the signed grid (zero point 0, the TFLite int8 rule; step from
  the MSE search of :mod:`repq.quantizers`, shared with QAT) in one of three states: FP,
  round-to-nearest, or AdaRound soft rounding (``floor(W/s) + h(α)``);
* an :class:`ActQuant` (per-tensor, learnable step, QDrop ``prob``) on every tensor that feeds a
  Conv2D / Dense, shared by all consumers of that tensor (MQBench ``AcademicQuantizer``: a
  residual ``Add`` sees the same quantized tensor). Its grid is QAT's: unsigned ``[0, 2^b - 1]``
  behind a ReLU, signed ``[-2^(b-1), 2^(b-1) - 1]`` otherwise, zero point 0;
* 8-bit weights for the first and last weight layers and 8-bit activations at their inputs.

Values go through TF's fake-quant ops (:func:`repq.quantizers.export_fake_quant`), like QAT's,
so :func:`repq.ptq.deployable_model` turns the result into a QAT-format model that exports
exactly.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from repq.layers.padded_conv import conv2d, normalize_pad, pad_amounts, zero_pad
from repq.ptq import adaround
from repq.ptq.graph import Graph, run_ops
from repq.ptq.observers import EMAStepObserver, weight_steps
from repq.ptq.qdrop import drop_mix
from repq.qat.transform import is_non_negative
from repq.quantizers import STEP_EPS, export_fake_quant, integer_range, lsq_fake_quant

FP, NEAREST, SOFT = 0, 1, 2
EDGE_BITS = 8


class QuantWeightLayer(keras.layers.Layer):
    """Base of the quantized Conv2D / Dense: kernel (HWIO / (in, out)), bias, α, per-channel steps.

    ``state`` (non-trainable): 0 FP kernel, 1 round-to-nearest, 2 AdaRound soft rounding.
    Only ``alpha`` is trainable. ``input_quantizer``: name of the :class:`ActQuant` feeding the
    layer (None: a float input), so the quantized model alone says which step each input has.
    """

    def __init__(self, kernel_shape, bits, activation=None, input_quantizer=None, **kwargs):
        super().__init__(**kwargs)
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self.units = self.kernel_shape[-1]
        self.bits = int(bits)
        self.qmin, self.qmax = integer_range(self.bits, signed=True)
        self.activation = keras.activations.get(activation)
        self.input_quantizer = input_quantizer

    @classmethod
    def from_layer(cls, layer, bits, input_quantizer=None):
        """A quantized copy of a built Conv2D / Dense ``layer`` (round-to-nearest not yet calibrated)."""
        q = cls(kernel_shape=layer.kernel.shape, bits=bits, name=layer.name, input_quantizer=input_quantizer,
                activation=keras.activations.serialize(layer.activation), **cls.op_args(layer))
        q.build(None)
        q.kernel.assign(ops.convert_to_numpy(layer.kernel))
        if layer.use_bias:
            q.bias.assign(ops.convert_to_numpy(layer.bias))
        return q

    def build(self, input_shape):
        def weight(name, shape, init="zeros", trainable=False):
            return self.add_weight(name=name, shape=shape, initializer=init, trainable=trainable)

        self.kernel = weight("kernel", self.kernel_shape)
        self.bias = weight("bias", (self.units,))
        self.alpha = weight("alpha", self.kernel_shape, trainable=True)
        self.scale = weight("scale", (self.units,), "ones")
        self.state = weight("state", ())
        self.built = True

    def quantized_kernel(self):
        """The kernel in use for the current ``state``."""
        w, s = self.kernel, self.scale

        def soft():
            return ops.clip(adaround.soft_integer(w, s, self.alpha), self.qmin, self.qmax) * s

        return tf.switch_case(tf.cast(self.state, tf.int32), [
            lambda: tf.identity(w),
            lambda: export_fake_quant(w, s, self.qmin, self.qmax, self.bits, per_channel=True),
            soft])

    def calibrate(self):
        """MSE-searched per-channel step (:func:`repq.quantizers.mse_initial_step`); switch to nearest."""
        self.scale.assign(weight_steps(self.kernel, self.qmin, self.qmax))
        self.state.assign(NEAREST)

    def start_adaround(self):
        """α from the fractional part of W/s (``h(α) = r``); switch to soft rounding."""
        self.alpha.assign(adaround.init_alpha(ops.convert_to_numpy(self.kernel),
                                              ops.convert_to_numpy(self.scale)))
        self.state.assign(SOFT)

    def finalize(self):
        """Store the hard-rounded kernel ``clip(floor(W/s) + 1[α>=0]) s``; back to nearest."""
        q = adaround.hard_integer(self.kernel, self.scale, self.alpha)
        self.kernel.assign(ops.clip(q, self.qmin, self.qmax) * self.scale)
        self.state.assign(NEAREST)

    def integer_kernel(self):
        """Integer codes ``W/s`` of the stored kernel (numpy float64, not rounded)."""
        k, s = (ops.convert_to_numpy(v).astype(np.float64) for v in (self.kernel, self.scale))
        return k / s

    def call(self, x):
        y = self.apply_kernel(x, self.quantized_kernel()) + self.bias
        return self.activation(y)

    def get_config(self):
        config = super().get_config()
        config.update(kernel_shape=self.kernel_shape, bits=self.bits, input_quantizer=self.input_quantizer,
                      activation=keras.activations.serialize(self.activation))
        return config


@keras.saving.register_keras_serializable(package="repq.ptq")
class QuantConv2D(QuantWeightLayer):
    """Quantized conv: ``pad`` zeros (an int, or ``((top, bottom), (left, right))``), then a ``padding``
    conv; grouped when the kernel's input depth is below the input's (depthwise as ``groups``)."""

    def __init__(self, kernel_shape, bits, strides=(1, 1), pad=0, padding="valid", groups=1, **kwargs):
        super().__init__(kernel_shape, bits, **kwargs)
        self.strides, self.pad, self.padding = tuple(strides), normalize_pad(pad), padding
        self.groups = int(groups)

    @staticmethod
    def op_args(layer):
        return dict(strides=layer.strides, pad=getattr(layer, "pad", 0), padding=layer.padding,
                    groups=layer.groups)

    def apply_kernel(self, x, kernel):
        x = zero_pad(x, self.pad)
        if self.padding == "valid":
            return conv2d(x, kernel, self.strides, self.groups)
        return ops.conv(x, kernel, strides=self.strides, padding=self.padding)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        sizes = []
        for size, k, s, (before, after) in zip((h, w), self.kernel_shape[:2], self.strides, pad_amounts(self.pad)):
            if size is not None:
                size += before + after
                size = (size - k) // s + 1 if self.padding == "valid" else -(-size // s)
            sizes.append(size)
        return (n, *sizes, self.units)

    def get_config(self):
        config = super().get_config()
        config.update(strides=self.strides, pad=self.pad, padding=self.padding, groups=self.groups)
        return config


@keras.saving.register_keras_serializable(package="repq.ptq")
class QuantDense(QuantWeightLayer):
    """Quantized Dense on the last axis."""

    @staticmethod
    def op_args(layer):
        return {}

    def apply_kernel(self, x, kernel):
        return ops.matmul(x, kernel)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)


@keras.saving.register_keras_serializable(package="repq")
class ActQuant(keras.layers.Layer):
    """Per-tensor fake quantizer on QAT's grid (zero point 0), a learnable step and QDrop dropping.

    Value: TF's fake-quant op; gradients: STE for ``x``, ``round(x/s) - x/s`` (or the clipped
    bound) for the step, without LSQ's scale factor (MQBench ``QDropFakeQuantize``).
    Non-trainable state: ``prob`` (keep-quantized probability, 1.0 outside reconstruction),
    ``enabled`` (0 passes ``x`` through).

    Args:
      bits: 2..8; signed: signed grid (False for a tensor behind a ReLU).
    """

    def __init__(self, bits, signed=True, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.bits, self.signed, self.seed = int(bits), bool(signed), int(seed)
        self.qmin, self.qmax = integer_range(self.bits, self.signed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def build(self, input_shape):
        def weight(name, init, trainable=False):
            return self.add_weight(name=name, shape=(), initializer=init, trainable=trainable)

        self.scale = weight("scale", "ones", trainable=True)
        self.prob = weight("prob", "ones")
        self.enabled = weight("enabled", "ones")
        self.built = True

    def reseed(self, seed):
        """Restart the QDrop mask stream from ``seed`` (an int < 2**31)."""
        self.seed_generator.state.assign(ops.cast(ops.convert_to_tensor([seed, 0]),
                                                  self.seed_generator.state.dtype))

    def positive_step(self):
        """The step in use, ``max(|scale|, eps)``."""
        return ops.maximum(ops.abs(self.scale), STEP_EPS)

    def call(self, x):
        xq = lsq_fake_quant(x, self.positive_step(), self.qmin, self.qmax)
        xq = tf.cond(self.prob < 1.0, lambda: drop_mix(xq, x, self.prob, self.seed_generator),
                     lambda: xq)
        return tf.cond(self.enabled > 0, lambda: xq, lambda: tf.identity(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(bits=self.bits, signed=self.signed, seed=self.seed)
        return config


def _copy_layer(layer):
    return layer.__class__.from_config(layer.get_config())


class QuantModel:
    """A reparametrized FP model and its quantized twin, sharing the tensor ids of :class:`Graph`.

    Attributes:
      fp_model: the plain FP model (kept, used for targets).
      graph: :class:`Graph` of ``fp_model``.
      model: the quantized ``keras.Model`` (same inputs/outputs as ``fp_model``).
      layers: op index -> layer of the quantized model.
      weight_layers: op index -> :class:`QuantWeightLayer`.
      act_quants: tensor id -> :class:`ActQuant` (tensors feeding a weight layer).
      edge_ops: op indices of the 8-bit first and last weight layers.
      visible: tensor id -> KerasTensor in ``model`` as consumers see it (quantized if any).
    """

    def __init__(self, fp_model, weight_bits, act_bits, seed=0):
        integer_range(weight_bits, True, "weight_bits"), integer_range(act_bits, False, "act_bits")
        self.fp_model = fp_model
        self.graph = g = Graph(fp_model)
        weight_ops = [op for op in g.ops if op.has_weights]
        if not weight_ops:
            raise TypeError(f"model {fp_model.name!r} has no Conv2D/Dense layer to quantize.")
        first = {op.index for op in weight_ops if set(op.inputs) & set(g.input_ids)} or {weight_ops[0].index}
        edge = first | {weight_ops[-1].index}
        self.edge_ops = edge
        self.layers, self.weight_layers, self.act_quants, self.visible = {}, {}, {}, {}
        inputs = [keras.Input(t.shape[1:], name=t.name) for t in fp_model.inputs]

        def publish(tid, value, producer=None):
            consumers = [g.ops[i] for i in g.consumers[tid]]
            wconsumers = [op for op in consumers if op.has_weights]
            if wconsumers:
                bits = EDGE_BITS if any(op.index in edge for op in wconsumers) else act_bits
                signed = producer is None or not is_non_negative(producer.layer)
                quant = ActQuant(bits, signed, seed=seed * 100003 + len(self.act_quants),
                                 name=f"{g.tensors[tid].name.replace('/', '_')}_act_quant"[-120:])
                self.act_quants[tid] = quant
                value = quant(value)
            self.visible[tid] = value

        for tid, x in zip(g.input_ids, inputs):
            publish(tid, x)
        for op in g.ops:
            if op.has_weights:
                cls = QuantConv2D if isinstance(op.layer, keras.layers.Conv2D) else QuantDense
                feeding = self.act_quants.get(op.inputs[0])
                layer = cls.from_layer(op.layer, EDGE_BITS if op.index in edge else weight_bits,
                                       input_quantizer=feeding.name if feeding is not None else None)
                self.weight_layers[op.index] = layer
            else:
                layer = _copy_layer(op.layer)
            self.layers[op.index] = layer
            args, kwargs = op.node.arguments.fill_in(self.visible)
            publish(op.output, layer(*args, **kwargs), producer=op)
        outputs = [self.visible[t] for t in g.output_ids]
        self.model = keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                                 outputs[0] if len(outputs) == 1 else outputs,
                                 name=f"{fp_model.name}_ptq")

    # ------------------------------------------------------------ calibration
    def calibrate(self, batches, verbose=0):
        """Activation observers (EMA of the per-batch MSE step, fake-quant off) over ``batches``, then
        weight observers.

        ``batches``: list of numpy input batches; ``verbose``: 1 shows a progress bar (batches,
        then weight layers).
        """
        tids = list(self.act_quants)
        probe = self.fp_submodel(tids)
        observers = {t: EMAStepObserver(self.act_quants[t].qmin, self.act_quants[t].qmax) for t in tids}
        bar = keras.utils.Progbar(len(batches) + len(self.weight_layers), verbose=verbose, unit_name="step")
        for x in batches:
            for t, value in zip(tids, probe(x)):
                observers[t].update(ops.convert_to_numpy(value))
            bar.add(1)
        for t in tids:
            self.act_quants[t].scale.assign(observers[t].step())
        for layer in self.weight_layers.values():
            layer.calibrate()
            bar.add(1)

    def fp_submodel(self, tids):
        """``f(x) -> [FP value of each tensor id]`` (model inputs pass through)."""
        return self._submodel(self.graph.model, [self.graph.tensors[t] for t in tids], tids)

    def quant_submodel(self, tids):
        """``f(x) -> [consumer-visible quantized value of each tensor id]``."""
        return self._submodel(self.model, [self.visible[t] for t in tids], tids)

    def _submodel(self, model, tensors, tids):
        inputs = set(self.graph.input_ids)
        outs = [t for t, tid in zip(tensors, tids) if tid not in inputs or model is self.model]
        model_in = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        sub = keras.Model(model_in, outs) if outs else None
        fn = tf.function(lambda x: sub(x, training=False), autograph=False) if sub else None

        def run(x):
            got = fn(x) if fn else []
            got = list(got) if isinstance(got, (list, tuple)) else [got]
            return [x if (tid in inputs and model is not self.model) else got.pop(0) for tid in tids]

        return run

    # ------------------------------------------------------------ execution
    def run_ops(self, ops_, values):
        """Run ``ops_`` of the quantized model on ``values`` (tensor id -> consumer-visible value)."""
        def post(op, y):
            quant = self.act_quants.get(op.output)
            return quant(y) if quant is not None else y

        return run_ops(ops_, values, lambda op: self.layers[op.index], post)

    def set_weight_state(self, state):
        for layer in self.weight_layers.values():
            layer.state.assign(state)

    def set_act_enabled(self, enabled):
        for quant in self.act_quants.values():
            quant.enabled.assign(float(enabled))
