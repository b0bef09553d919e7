"""The quantized model: AdaRound weight quantizers and activation quantizers on a plain model.

``QuantModel(fp_model, weight_bits, act_bits)`` rebuilds a reparametrized functional model with

* every Conv2D / Dense replaced by :class:`QuantConv2D` / :class:`QuantDense`: asymmetric
  per-output-channel weights (scale and integer zero point from the MSE observer) in one of
  three states: FP, round-to-nearest, or AdaRound soft rounding (``floor(W/s) + h(α)``);
* an :class:`ActQuant` (asymmetric per-tensor, learnable step, QDrop ``prob``) on every tensor
  that feeds a Conv2D / Dense, shared by all consumers of that tensor (MQBench
  ``AcademicQuantizer``: a residual ``Add`` sees the same quantized tensor);
* 8-bit weights for the first and last weight layers and 8-bit activations at their inputs.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from repq.layers.padded_conv import symmetric_pad
from repq.ptq import adaround
from repq.ptq.fake_quant import SCALE_EPS, affine_fake_quant, affine_range, drop_mix
from repq.ptq.graph import Graph, run_ops
from repq.ptq.observers import EMAMSEObserver, weight_qparams

FP, NEAREST, SOFT = 0, 1, 2
EDGE_BITS = 8


class QuantWeightLayer(keras.layers.Layer):
    """Base of the quantized Conv2D / Dense: kernel (HWIO / (in, out)), bias, α, per-channel qparams.

    ``state`` (non-trainable): 0 FP kernel, 1 round-to-nearest, 2 AdaRound soft rounding.
    Only ``alpha`` is trainable.
    """

    def __init__(self, kernel_shape, bits, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self.units = self.kernel_shape[-1]
        self.bits = int(bits)
        self.qmin, self.qmax = affine_range(self.bits)
        self.activation = keras.activations.get(activation)

    @classmethod
    def from_layer(cls, layer, bits):
        """A quantized copy of a built Conv2D / Dense ``layer`` (round-to-nearest not yet calibrated)."""
        q = cls(kernel_shape=layer.kernel.shape, bits=bits, name=layer.name,
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
        self.zero_point = weight("zero_point", (self.units,))
        self.state = weight("state", ())
        self.built = True

    def quantized_kernel(self):
        """The kernel in use for the current ``state``."""
        w, s, z = self.kernel, self.scale, self.zero_point

        def soft():
            v = adaround.soft_integer(w, s, self.alpha) + z
            return (ops.clip(v, self.qmin, self.qmax) - z) * s

        return tf.switch_case(tf.cast(self.state, tf.int32), [
            lambda: tf.identity(w),
            lambda: affine_fake_quant(w, s, z, self.qmin, self.qmax),
            soft])

    def calibrate(self):
        """MSE-searched per-channel scale / zero point; switch to round-to-nearest."""
        scale, zero_point = weight_qparams(ops.convert_to_numpy(self.kernel), self.qmin, self.qmax)
        self.scale.assign(scale)
        self.zero_point.assign(zero_point)
        self.state.assign(NEAREST)

    def start_adaround(self):
        """α from the fractional part of W/s (``h(α) = r``); switch to soft rounding."""
        self.alpha.assign(adaround.init_alpha(ops.convert_to_numpy(self.kernel),
                                              ops.convert_to_numpy(self.scale)))
        self.state.assign(SOFT)

    def finalize(self):
        """Store the hard-rounded kernel ``(clip(floor(W/s) + 1[α>=0] + z) - z) s``; back to nearest."""
        q = adaround.hard_integer(self.kernel, self.scale, self.alpha) + self.zero_point
        self.kernel.assign((ops.clip(q, self.qmin, self.qmax) - self.zero_point) * self.scale)
        self.state.assign(NEAREST)

    def integer_kernel(self):
        """Integer codes ``W/s + z`` of the stored kernel (numpy float64, not rounded)."""
        k, s, z = (ops.convert_to_numpy(v).astype(np.float64) for v in (self.kernel, self.scale,
                                                                           self.zero_point))
        return k / s + z

    def call(self, x):
        y = self.apply_kernel(x, self.quantized_kernel()) + self.bias
        return self.activation(y)

    def get_config(self):
        config = super().get_config()
        config.update(kernel_shape=self.kernel_shape, bits=self.bits,
                      activation=keras.activations.serialize(self.activation))
        return config


@keras.saving.register_keras_serializable(package="repq.ptq")
class QuantConv2D(QuantWeightLayer):
    """Quantized conv: ``pad`` zeros per side, then a ``padding`` conv (groups from the kernel shape)."""

    def __init__(self, kernel_shape, bits, strides=(1, 1), pad=0, padding="valid", **kwargs):
        super().__init__(kernel_shape, bits, **kwargs)
        self.strides, self.pad, self.padding = tuple(strides), int(pad), padding

    @staticmethod
    def op_args(layer):
        return dict(strides=layer.strides, pad=getattr(layer, "pad", 0), padding=layer.padding)

    def apply_kernel(self, x, kernel):
        return ops.conv(symmetric_pad(x, self.pad), kernel, strides=self.strides, padding=self.padding)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        sizes = []
        for size, k, s in zip((h, w), self.kernel_shape[:2], self.strides):
            if size is not None:
                size += 2 * self.pad
                size = (size - k) // s + 1 if self.padding == "valid" else -(-size // s)
            sizes.append(size)
        return (n, *sizes, self.units)

    def get_config(self):
        config = super().get_config()
        config.update(strides=self.strides, pad=self.pad, padding=self.padding)
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
    """Asymmetric per-tensor fake quantizer with a learnable step and QDrop dropping.

    Non-trainable state: ``zero_point`` (integer), ``prob`` (keep-quantized probability,
    1.0 outside reconstruction), ``enabled`` (0 passes ``x`` through).
    """

    def __init__(self, bits, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.bits, self.seed = int(bits), int(seed)
        self.qmin, self.qmax = affine_range(self.bits)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def build(self, input_shape):
        def weight(name, init, trainable=False):
            return self.add_weight(name=name, shape=(), initializer=init, trainable=trainable)

        self.scale = weight("scale", "ones", trainable=True)
        self.zero_point = weight("zero_point", "zeros")
        self.prob = weight("prob", "ones")
        self.enabled = weight("enabled", "ones")
        self.built = True

    def reseed(self, seed):
        """Restart the QDrop mask stream from ``seed`` (an int < 2**31)."""
        self.seed_generator.state.assign(ops.cast(ops.convert_to_tensor([seed, 0]),
                                                  self.seed_generator.state.dtype))

    def set_qparams(self, scale, zero_point):
        self.scale.assign(scale)
        self.zero_point.assign(zero_point)

    def call(self, x):
        s = ops.maximum(ops.abs(self.scale), SCALE_EPS)
        xq = affine_fake_quant(x, s, self.zero_point, self.qmin, self.qmax)
        xq = tf.cond(self.prob < 1.0, lambda: drop_mix(xq, x, self.prob, self.seed_generator),
                     lambda: xq)
        return tf.cond(self.enabled > 0, lambda: xq, lambda: tf.identity(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(bits=self.bits, seed=self.seed)
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
        affine_range(weight_bits), affine_range(act_bits)  # validates both (2..8)
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

        def publish(tid, value):
            consumers = [g.ops[i] for i in g.consumers[tid]]
            wconsumers = [op for op in consumers if op.has_weights]
            if wconsumers:
                bits = EDGE_BITS if any(op.index in edge for op in wconsumers) else act_bits
                quant = ActQuant(bits, seed=seed * 100003 + len(self.act_quants),
                                 name=f"{g.tensors[tid].name.replace('/', '_')}_act_quant"[-120:])
                self.act_quants[tid] = quant
                value = quant(value)
            self.visible[tid] = value

        for tid, x in zip(g.input_ids, inputs):
            publish(tid, x)
        for op in g.ops:
            if op.has_weights:
                cls = QuantConv2D if isinstance(op.layer, keras.layers.Conv2D) else QuantDense
                layer = cls.from_layer(op.layer, EDGE_BITS if op.index in edge else weight_bits)
                self.weight_layers[op.index] = layer
            else:
                layer = _copy_layer(op.layer)
            self.layers[op.index] = layer
            args, kwargs = op.node.arguments.fill_in(self.visible)
            publish(op.output, layer(*args, **kwargs))
        outputs = [self.visible[t] for t in g.output_ids]
        self.model = keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                                 outputs[0] if len(outputs) == 1 else outputs,
                                 name=f"{fp_model.name}_ptq")

    # ------------------------------------------------------------ calibration
    def calibrate(self, batches, verbose=0):
        """Activation observers (EMA-MSE, fake-quant off) over ``batches``, then weight observers.

        ``batches``: list of numpy input batches; ``verbose``: 1 shows a progress bar (batches,
        then weight layers).
        """
        tids = list(self.act_quants)
        probe = self.fp_submodel(tids)
        observers = {t: EMAMSEObserver(self.act_quants[t].qmin, self.act_quants[t].qmax) for t in tids}
        bar = keras.utils.Progbar(len(batches) + len(self.weight_layers), verbose=verbose, unit_name="step")
        for x in batches:
            for t, value in zip(tids, probe(x)):
                observers[t].update(ops.convert_to_numpy(value))
            bar.add(1)
        for t in tids:
            self.act_quants[t].set_qparams(*observers[t].qparams())
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
