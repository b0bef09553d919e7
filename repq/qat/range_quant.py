"""8-bit range fake-quant for the tensors that have no learned LSQ step.

An integer TFLite model holds *every* tensor in int8, not only conv inputs:
conv outputs feeding Add/PReLU/pooling, residual sums, the model output. QAT
puts a :class:`RangeFakeQuant` on each of them (``repq.qat.quantize_model``),
so the QAT model rounds where the deployed model rounds; the export reuses its
range. Its range is the exponential moving average of the batch min/max in
training (like tfmot's moving-average quantizer), always containing 0 (an int8
zero point must exist); gradients pass straight through inside the range.
"""

import weakref

import keras
import tensorflow as tf
from keras import ops

from repq.distribute import replicated
from repq.graph import co_readers
from repq.quantizers import integer_range


@keras.saving.register_keras_serializable(package="repq")
class RangeFakeQuant(keras.layers.Layer):
    """``fake_quant_with_min_max_vars(x, lo, hi, num_bits=8)`` with a tracked range.

    Args:
      lo, hi: initial range in float units (``lo <= 0 <= hi``).
      momentum: EMA momentum of the range in training.
    Call args:
      training: update the range from the batch (EMA; the first batch sets it).
    Flags: ``calibrating`` (``repq.qat.calibrate``) initialises the range from the
    next input if it has none; ``observing`` (export calibration) widens it to the
    min/max of every input and returns ``x`` unchanged.
    """

    def __init__(self, lo=0.0, hi=0.0, momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        self.init_range = (float(lo), float(hi))
        self.momentum = float(momentum)
        self.observing = False
        self.calibrating = False

    def build(self, input_shape):
        lo, hi = self.init_range
        self.lo = self.add_weight(name="lo", shape=(), initializer=keras.initializers.Constant(lo),
                                  trainable=False, aggregation="mean")
        self.hi = self.add_weight(name="hi", shape=(), initializer=keras.initializers.Constant(hi),
                                  trainable=False, aggregation="mean")
        self.initialized = self.add_weight(name="initialized", shape=(), trainable=False, aggregation="mean",
                                           initializer=keras.initializers.Constant(float(hi > lo)))

    def _batch_range(self, x):
        """``(min(x, 0), max(x, 0))`` over the global batch (all replicas)."""
        lo, hi = ops.minimum(ops.min(x), 0.0), ops.maximum(ops.max(x), 0.0)
        ctx = tf.distribute.get_replica_context() if replicated() else None
        if ctx is not None:  # the global batch's range, identical on every replica
            lo = ops.min(ctx.all_gather(ops.reshape(lo, (1,)), axis=0))
            hi = ops.max(ctx.all_gather(ops.reshape(hi, (1,)), axis=0))
        return lo, hi

    def _update(self, x, momentum):
        """Move the range toward the batch range (``momentum`` 1: keep it once initialised)."""
        lo, hi = self._batch_range(ops.stop_gradient(x))
        first = self.initialized <= 0
        self.lo.assign(ops.where(first, lo, momentum * self.lo + (1 - momentum) * lo))
        self.hi.assign(ops.where(first, hi, momentum * self.hi + (1 - momentum) * hi))
        self.initialized.assign(1.0)

    def call(self, x, training=False):
        if self.observing:
            self.lo.assign(ops.minimum(self.lo, ops.min(x)))
            self.hi.assign(ops.maximum(self.hi, ops.max(x)))
            self.initialized.assign(1.0)
            return x
        if training or self.calibrating:
            self._update(x, self.momentum if training else 1.0)
        return tf.quantization.fake_quant_with_min_max_vars(x, self.lo, self.hi, num_bits=8)

    def step(self):
        """The int8 scale of the range (float units per integer step)."""
        return (float(self.hi.numpy()) - float(self.lo.numpy())) / 255.0

    def get_config(self):
        lo, hi = ((float(self.lo.numpy()), float(self.hi.numpy())) if self.built else self.init_range)
        return {**super().get_config(), "lo": lo, "hi": hi, "momentum": self.momentum}


def learned_input_step(layer):
    """``(step, signed)`` of the learned input quantization of a QAT wrapper or quantized deploy layer,
    or None when ``layer`` has none."""
    quantizer = getattr(layer, "input_quantizer", None)
    if quantizer is not None:
        return quantizer.positive_step(), quantizer.signed
    if getattr(layer, "act_bits", None) is not None and hasattr(layer, "input_step"):
        return ops.convert_to_tensor(layer.input_step), layer.input_signed
    return None


def container_range(layer):
    """``(qmin8 * s, qmax8 * s)``: the 8-bit container of ``layer``'s learned input step ``s``
    (the int8 range TFLite gives the conv's input tensor)."""
    step, signed = learned_input_step(layer)
    qmin, qmax = integer_range(8, signed)
    return qmin * step, qmax * step


@keras.saving.register_keras_serializable(package="repq")
class LearnedStepContainer(keras.layers.Layer):
    """``x`` on the grid of a sibling layer's learned input step ``s``, in an 8-bit container.

    For a tensor that feeds a quantized conv *and* other layers (a ResNet block
    output: the next conv1 and the identity shortcut). Integer TFLite stores that
    tensor once, in the conv's input scale ``s`` (so the conv reads it without a
    requantization); this layer gives the other consumers the same values:
    ``fake_quant(x, qmin8 * s, qmax8 * s)``, no gradient into ``s``.

    Args:
      leader: name of the quantized layer reading the same tensor (QAT wrapper or
        deploy conv; nested models are searched by name prefix).
    """

    def __init__(self, leader, **kwargs):
        super().__init__(**kwargs)
        self.leader = leader
        self._leader_ref = None  # weak: the leader belongs to the model, not to this layer

    def leader_layer(self):
        """The sibling layer whose learned step this container uses (looked up once)."""
        leader = self._leader_ref() if self._leader_ref is not None else None
        if leader is not None:
            return leader
        for layer in co_readers(self):
            candidates = layer.layers if isinstance(layer, keras.Model) else [layer]
            for candidate in candidates:
                if candidate.name.startswith(self.leader) and learned_input_step(candidate) is not None:
                    self._leader_ref = weakref.ref(candidate)
                    return candidate
        raise ValueError(f"{self.name}: no layer {self.leader!r} with a learned input step reads the "
                         "same tensor; this layer only works inside the model it was placed in.")

    def follow(self, layer):
        """Use ``layer``'s learned input step from now on (e.g. a copy of the leader; PTQ's workspaces)."""
        self._leader_ref = weakref.ref(layer)

    def compute_output_spec(self, x):
        # Symbolic calls (model construction) must not look up the leader: it may not be wired yet.
        return keras.KerasTensor(x.shape, x.dtype)

    def call(self, x):
        lo, hi = container_range(self.leader_layer())
        return tf.quantization.fake_quant_with_min_max_vars(x, ops.stop_gradient(lo), ops.stop_gradient(hi),
                                                            num_bits=8)

    def get_config(self):
        return {**super().get_config(), "leader": self.leader}
