"""LSQ fake-quantizers with learnable step sizes (Esser et al., ICLR 2020).

Grid: ``x_hat = clip(round(x / s), qmin, qmax) * s`` with zero point 0; signed
tensors use ``[-2^(b-1), 2^(b-1)-1]``, unsigned ones ``[0, 2^b-1]``. Rounding is
half-up (``floor(v + 0.5)``).

The forward *value* is computed by ``tf.quantization.fake_quant_with_min_max_vars``
(``_per_channel`` for weights) with ``min = qmin_8*s``, ``max = qmax_8*s``, after a
clamp to ``[qmin*s, qmax*s]`` for sub-8-bit grids (``export_fake_quant``). That is
the op the TFLite converter turns into int8 tensors, so the QAT model, its
deploy form and the SavedModel agree bit for bit, including the float rounding
of values that sit on a rounding tie. The gradients are LSQ's (below), attached
with a straight-through identity.

Gradients (straight-through estimator, LSQ):
  ``d x_hat / d x = 1`` inside ``[qmin*s, qmax*s]``, 0 outside;
  ``d x_hat / d s = round(x/s) - x/s`` inside, ``qmin`` / ``qmax`` when clipped,
  multiplied by the LSQ factor ``g = 1/sqrt(N * qmax)`` (N = elements per step:
  per output channel for weights, per example for activations).
"""

import math

import keras
import tensorflow as tf
from keras import ops

from repq.distribute import replicated

MIN_BITS, MAX_BITS = 2, 8
STEP_EPS = 1e-8
# MSE step search (MQBench's MSEObserver, here symmetric with zero point 0).
MSE_P = 2.4
MSE_CANDIDATES = 80
MAX_SEARCH_ELEMENTS = 1 << 16
INIT_METHODS = ("mse", "lsq")


def integer_range(bits, signed, argument="bits"):
    """``(qmin, qmax)`` of a ``bits``-bit grid; raises ``ValueError`` outside 2..8 bits, naming
    ``argument`` (the caller's parameter) in Keras' form."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"Invalid value for argument {argument}. Expected an integer in [{MIN_BITS}, "
                         f"{MAX_BITS}]. Received: {argument}={bits!r}")
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def round_ste(x):
    """Half-up rounding whose gradient is the identity (straight-through)."""
    return x + ops.stop_gradient(ops.floor(x + 0.5) - x)


def grad_scale(t, factor):
    """Value ``t``, gradient multiplied by ``factor``."""
    return ops.stop_gradient(t - t * factor) + t * factor


def lsq_surrogate(x, step, qmin, qmax, grad_factor=1.0):
    """``clip(round(x / s), qmin, qmax) * s`` written so autograd yields LSQ's gradients."""
    s = grad_scale(step, grad_factor)
    return ops.clip(round_ste(x / s), qmin, qmax) * s


def lsq_fake_quant(x, step, qmin, qmax, grad_factor=1.0, per_channel=False):
    """LSQ fake quantization: TF fake-quant value, LSQ gradients for ``x`` and ``step``.

    Args:
      x: tensor; per-channel steps apply to its last axis.
      step: scalar, or ``(C,)`` with ``per_channel=True``.
      qmin, qmax: the integer grid (``integer_range``).
      grad_factor: LSQ step-gradient scale.
    """
    bits = int(math.log2(qmax - qmin + 1))
    surrogate = lsq_surrogate(x, step, qmin, qmax, grad_factor)
    value = export_fake_quant(ops.stop_gradient(x), ops.stop_gradient(step), qmin, qmax, bits, per_channel)
    return surrogate + ops.stop_gradient(value - surrogate)


def lsq_grad_factor(elements_per_step, qmax):
    """LSQ's step-gradient scale ``1 / sqrt(N * qmax)``."""
    return 1.0 / math.sqrt(max(elements_per_step, 1) * qmax)


def lsq_initial_step(x, qmax, axis=None):
    """LSQ's data-driven init ``2 * mean|x| / sqrt(qmax)`` (per channel along ``axis``)."""
    if axis is None:
        mean_abs = ops.mean(ops.abs(x))
    else:
        reduce = [a for a in range(len(x.shape)) if a != axis % len(x.shape)]
        mean_abs = ops.mean(ops.abs(x), axis=reduce)
    return ops.maximum(2.0 * mean_abs / math.sqrt(qmax), STEP_EPS)


def _grid_error(x, step, qmin, qmax, axis):
    """``mean |clip(round(x/s)) * s - x|^p`` over ``axis``."""
    x_hat = ops.clip(ops.floor(x / step + 0.5), qmin, qmax) * step
    return ops.mean(ops.power(ops.abs(x_hat - x), MSE_P), axis=axis)


def _leading_examples(x):
    """The first examples of ``x`` (N, ...) holding about ``MAX_SEARCH_ELEMENTS`` values.

    Whole examples, not a strided sample: a stride that is a multiple of the
    channel count would read a single channel of an NHWC tensor.
    """
    per_example = tf.reduce_prod(tf.shape(x)[1:])
    count = tf.maximum(1, MAX_SEARCH_ELEMENTS // tf.maximum(per_example, 1))
    return x[:count]


def mse_initial_step(x, qmin, qmax, per_channel=False):
    """The step minimising ``mean |fq(x) - x|^2.4`` among 80 shrinking ranges.

    Candidate ranges are ``r * (1 - 0.01 i)``, ``i = 0..79``, with ``r`` = max |x|
    (per last-axis channel when ``per_channel``), mapped to steps by the grid's
    half width. Per tensor, the error is scored on the leading examples holding
    about 65,536 values (all candidates at once); per channel, on every value
    (:func:`_per_channel_mse_steps`). A tighter, data-fitted start than LSQ's
    ``2 mean|x| / sqrt(qmax)``, which badly overshoots on non-zero-mean inputs such
    as 0-255 images.
    """
    x = ops.cast(x, "float32")
    half_levels = float(qmax if qmin == 0 else (qmax - qmin) / 2)
    if per_channel:
        flat = tf.reshape(x, (-1, x.shape[-1]))
        return _per_channel_mse_steps(flat, float(qmin), float(qmax), half_levels)
    sample = ops.reshape(_leading_examples(x), (-1,))
    steps = ops.maximum(ops.max(ops.abs(x)) * _candidate_shrink() / half_levels, STEP_EPS)  # (K,)
    errors = _grid_error(sample[None, :], steps[:, None], qmin, qmax, axis=1)
    return steps[ops.argmin(errors)]


def _candidate_shrink():
    """``1 - 0.01 i`` for the ``MSE_CANDIDATES`` candidate ranges, shape (K,)."""
    return 1.0 - 0.01 * ops.arange(MSE_CANDIDATES, dtype="float32")


@tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)] + [tf.TensorSpec([], tf.float32)] * 3,
             reduce_retracing=True)
def _per_channel_mse_steps(flat, qmin, qmax, half_levels):
    """Per-column best step of ``flat`` (M, C) -> (C,); the search of :func:`mse_initial_step`.

    Traced once for every shape (its signature is shape-free) and run as one graph:
    each candidate's error is a full pass over the M x C values, so the work is
    arithmetic, and the graph runs candidates side by side on the CPU's cores
    instead of one eager op at a time (about 1.5x faster on a 3x3x512x512 kernel).
    """
    steps = tf.maximum(tf.reduce_max(tf.abs(flat), axis=0)[None, :] * _candidate_shrink()[:, None] / half_levels,
                       STEP_EPS)  # (K, C)
    errors = tf.stack([_grid_error(flat, steps[k], qmin, qmax, axis=0) for k in range(MSE_CANDIDATES)])
    best = tf.argmin(errors, axis=0)
    return tf.gather(tf.transpose(steps), best, batch_dims=1)


def export_fake_quant(x, step, qmin, qmax, bits, per_channel=False):
    """The same grid through TF's fake-quant ops, which TFLite converts to int8.

    Sub-8-bit grids are expressed as an 8-bit fake-quant with the same step
    (values already on the small grid stay put) after an explicit clamp to
    ``[qmin*s, qmax*s]``, so the stored integers keep the ``bits``-bit range.
    """
    if bits < 8:
        x = ops.minimum(ops.maximum(x, qmin * step), qmax * step)
        qmin8, qmax8 = integer_range(8, qmin < 0)
    else:
        qmin8, qmax8 = qmin, qmax
    lo, hi = qmin8 * step, qmax8 * step
    if per_channel:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(x, lo, hi, num_bits=8)
    return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8)


class LSQQuantizer(keras.layers.Layer):
    """Base of the weight/activation quantizers: a learnable step and its init flag.

    The step is initialised from data once (``init="mse"``: MSE range search,
    the default; ``"lsq"``: LSQ's ``2 mean|x| / sqrt(qmax)``): activation steps
    from the first tensor seen in training or by :func:`repq.qat.calibrate`,
    weight steps from the kernel when the QAT wrapper is built. Under a multi-replica ``tf.distribute`` strategy
    a replica must not write the step, so there only ``calibrate`` initialises it.

    Args:
      bits: 2..8.
      signed: signed (symmetric) or unsigned grid.
      per_channel_axis: None for one step per tensor, else the channel axis.
    """

    def __init__(self, bits, signed, per_channel_axis=None, init="mse", **kwargs):
        super().__init__(**kwargs)
        if init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}.")
        if per_channel_axis not in (None, -1):
            raise ValueError("per-channel steps are supported on the last axis only (per_channel_axis=-1).")
        self.init = init
        self.qmin, self.qmax = integer_range(bits, signed)
        self.bits, self.signed = bits, bool(signed)
        self.per_channel_axis = per_channel_axis
        self.calibrating = False  # set by repq.qat.calibrate: initialise from the next input
        # PTQ reconstruction (repq.ptq) sets these on its workspace copies: ``drop(x_quant, x)`` mixes
        # quantized and float values (QDrop), ``rounding(x, quantizer)`` replaces round-to-nearest
        # (AdaRound's learned rounding of a kernel).
        self.drop = None
        self.rounding = None

    def build(self, input_shape):
        shape = () if self.per_channel_axis is None else (int(input_shape[self.per_channel_axis]),)
        self.step = self.add_weight(name="step", shape=shape, initializer="ones")
        self.initialized = self.add_weight(name="initialized", shape=(), initializer="zeros",
                                           trainable=False)

    def positive_step(self):
        """The step in use: ``max(|step|, eps)``, so it stays positive; a NaN/Inf step reads as eps.

        How ``maximum`` (and the ops after it) treat NaN is unspecified and differs between CPU
        code paths, so a non-finite step is replaced by an explicit select, whose semantics are
        defined; finite steps, their values and gradients, are exactly those of
        ``max(|step|, eps)``. A non-finite step stays non-finite in the variable (any update keeps
        it NaN/Inf), where :class:`repq.callbacks.NaNGuard` reports it.
        """
        return ops.where(ops.isfinite(self.step), ops.maximum(ops.abs(self.step), STEP_EPS), STEP_EPS)

    def initial_step(self, x):
        """The data-driven step for ``x`` (``init``: "mse" search or LSQ's formula)."""
        if self.init == "lsq":
            return lsq_initial_step(x, self.qmax, self.per_channel_axis)
        return mse_initial_step(x, self.qmin, self.qmax, per_channel=self.per_channel_axis is not None)

    def initialize_from(self, x):
        """Set the step from ``x`` once; later calls leave it alone (the search only runs once)."""
        step = tf.cond(self.initialized > 0, lambda: tf.convert_to_tensor(self.step),
                       lambda: self.initial_step(x))
        self.step.assign(step)
        self.initialized.assign(1.0)

    def elements_per_step(self, shape):
        raise NotImplementedError

    def call(self, x, training=False):
        if self.calibrating or (training and not replicated()):
            self.initialize_from(ops.stop_gradient(x))
        return self.quantized(x)

    def quantized(self, x):
        """``x`` on the grid: round-to-nearest (LSQ) unless a ``rounding`` is set, then ``drop``."""
        x_quant = self.fake_quant(x) if self.rounding is None else self.rounding(x, self)
        return x_quant if self.drop is None else self.drop(x_quant, x)

    def fake_quant(self, x):
        factor = lsq_grad_factor(self.elements_per_step(x.shape), self.qmax)
        return lsq_fake_quant(x, self.positive_step(), self.qmin, self.qmax, factor,
                              per_channel=self.per_channel_axis is not None)

    def get_config(self):
        config = super().get_config()
        config.update(bits=self.bits, signed=self.signed, per_channel_axis=self.per_channel_axis,
                      init=self.init)
        return config


@keras.saving.register_keras_serializable(package="repq")
class WeightQuantizer(LSQQuantizer):
    """Signed per-output-channel LSQ for HWIO conv / (in, out) dense kernels (last axis)."""

    def __init__(self, bits, signed=True, per_channel_axis=-1, **kwargs):
        super().__init__(bits, signed, per_channel_axis, **kwargs)

    def call(self, x, training=False):
        # Kernels are known when the layer is built: QuantWrapper.build initialises
        # the step there, so the training graph never carries the search.
        return self.quantized(x)

    def elements_per_step(self, shape):
        return int(math.prod(shape[:-1]))


@keras.saving.register_keras_serializable(package="repq")
class ActivationQuantizer(LSQQuantizer):
    """Per-tensor LSQ for activations (unsigned after ReLU, signed otherwise)."""

    def __init__(self, bits, signed=False, per_channel_axis=None, **kwargs):
        super().__init__(bits, signed, None, **kwargs)

    def elements_per_step(self, shape):
        known = [d for d in shape[1:] if d is not None]
        return int(math.prod(known)) if known else 1
