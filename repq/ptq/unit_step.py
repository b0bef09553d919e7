"""One traced reconstruction step shared by every unit of the same signature.

A :class:`UnitStep` owns private copies ("workspace") of a unit's layers (QAT wrappers whose
quantizers it gives AdaRound's rounding and QDrop's dropping), two Adam optimizers and a seed generator, and traces the optimisation step and the
evaluation forward once. Another unit with the same :func:`signature` (same ops, layer configs,
wiring, quantizers, cache shapes and :class:`ReconConfig`) reuses both traces: :meth:`load`
copies its variables into the workspace, :meth:`store` copies them back, and the optimizer
state is reset in between. The arithmetic is the one of the unit's own layers, so results do
not depend on whether a trace was shared.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from repq.ptq import adaround
from repq.ptq.qdrop import QDrop, drop_mix
from repq.ptq.graph import run_ops
from repq.qat.range_quant import LearnedStepContainer


def reconstruction_loss(y_hat, y):
    """``mean over batch/spatial of Σ_channels (ŷ - y)^2`` (NHWC or (N, C))."""
    return ops.mean(ops.sum(ops.square(y_hat - y), axis=-1))


def _without_names(config):
    """``config`` (nested dicts/lists) without its ``name`` entries at any depth."""
    if isinstance(config, dict):
        return {k: _without_names(v) for k, v in config.items() if k != "name"}
    if isinstance(config, (list, tuple)):
        return type(config)(_without_names(v) for v in config)
    return config


def _config_key(layer):
    """Class and config of ``layer`` without names (its own and its wrapped layer's), a range's initial
    ``lo``/``hi`` (its variables are copied in) and a step container's leader (the wiring and the leader's
    position are part of the signature)."""
    config = _without_names(layer.get_config())
    for key in ("leader", "lo", "hi"):
        config.pop(key, None)
    return type(layer).__name__, repr(config)


def _leaders(qmodel, unit):
    """op index -> the leader of each :class:`LearnedStepContainer` of ``unit``: the position of that
    wrapper among the unit's ops, or the model's layer itself when it lies outside the unit."""
    leaders = {}
    for op in unit.ops:
        layer = qmodel.layers[op.index]
        if isinstance(layer, LearnedStepContainer):
            leader = layer.leader_layer()
            leaders[op.index] = next((j for j, o in enumerate(unit.ops) if qmodel.layers[o.index] is leader), leader)
    return leaders


def signature(qmodel, unit, cache, config):
    """Hashable key: units with equal keys run the same computation on their own variables."""
    refs = {t: f"in{k}" for k, t in enumerate(unit.inputs)}
    ops_key = []
    leaders = _leaders(qmodel, unit)
    for j, op in enumerate(unit.ops):
        args, kwargs = op.node.arguments.fill_in(refs)
        leader = leaders.get(op.index)
        ops_key.append((_config_key(qmodel.layers[op.index]), repr((args, kwargs)), op.output == unit.output,
                        leader if isinstance(leader, int) or leader is None else id(leader)))
        refs[op.output] = f"op{j}"
    shapes = tuple(tuple(x.shape) for x in cache.x_quant + [cache.target])
    return tuple(ops_key), shapes, cache.x_fp is not None, dataclasses.astuple(config)


def _clone(layer):
    return layer.__class__.from_config(layer.get_config())


def _copy_variables(src, dst):
    for a, b in zip(src.variables, dst.variables, strict=True):
        b.assign(a)


def unit_seeds(seed, count):
    """``count`` int seeds (< 2**31) derived from ``seed``, one per activation quantizer of a unit."""
    return [int(s >> 1) for s in np.random.SeedSequence([seed, 1]).generate_state(count)] if count else []


class UnitStep:
    """Traced step/evaluation on a workspace copy of ``unit`` (a template for its signature).

    The workspace wrappers' weight quantizers round with AdaRound (:class:`repq.ptq.adaround.SoftRounding`)
    and their input quantizers drop with QDrop (:class:`repq.ptq.qdrop.QDrop`); both stay off until
    :meth:`start`. Call :meth:`load` with the unit to optimise, :meth:`start`, then :meth:`step`,
    :meth:`finish` (hard rounding) and :meth:`store`; :meth:`evaluate` any time. Cache tensors are
    ``(num_batches, batch, ...)`` arguments, not captures.
    """

    def __init__(self, qmodel, unit, cache, config):
        self.unit, self.config = unit, config
        self.layers = {op.index: _clone(qmodel.layers[op.index]) for op in unit.ops}
        for index, leader in _leaders(qmodel, unit).items():  # containers read their leader's step
            self.layers[index].follow(self.layers[unit.ops[leader].index] if isinstance(leader, int) else leader)
        self._run([x[0] for x in cache.x_quant])  # builds the copies on real shapes, eagerly
        self.weight_layers = [self.layers[op.index] for op in unit.weight_ops]
        self.roundings = []
        for layer in self.weight_layers:
            rounding = adaround.SoftRounding(layer.float_kernel_and_bias()[0].shape)
            layer.weight_quantizer.rounding = rounding
            self.roundings.append(rounding)
        self.input_quantizers = [l.input_quantizer for l in self.weight_layers if l.input_quantizer is not None]
        self.drops = []
        for quantizer in self.input_quantizers:
            quantizer.drop = QDrop()
            self.drops.append(quantizer.drop)
        self.alphas = [r.alpha for r in self.roundings]
        self.scales = [q.step for q in self.input_quantizers] if config.learn_scales else []
        self.opt_w = keras.optimizers.Adam(config.alpha_lr, epsilon=1e-8)
        self.opt_w.build(self.alphas)
        self.opt_a = None
        if self.scales:
            schedule = keras.optimizers.schedules.CosineDecay(config.scale_lr, config.iters, alpha=0.0)
            self.opt_a = keras.optimizers.Adam(schedule, epsilon=1e-8)
            self.opt_a.build(self.scales)
        self.seed_gen = keras.random.SeedGenerator(0)
        self.step = tf.function(self._step, autograph=False)
        self.forward = tf.function(self._run, autograph=False)

    def _run(self, xs):
        """Unit output of the workspace for input tensors ``xs`` (in ``unit.inputs`` order)."""
        values = dict(zip(self.unit.inputs, xs))
        return run_ops(self.unit.ops, values, lambda op: self.layers[op.index])[self.unit.output]

    def _pairs(self, qmodel, unit):
        """(model layer, workspace layer) for every op of ``unit``."""
        return [(qmodel.layers[op.index], self.layers[t_op.index]) for op, t_op in zip(unit.ops, self.unit.ops)]

    def load(self, qmodel, unit, seed):
        """Copy ``unit``'s variables in; fresh optimizer state; random streams from ``seed``."""
        for model_layer, work in self._pairs(qmodel, unit):
            _copy_variables(model_layer, work)
        for opt in (self.opt_w, self.opt_a):
            if opt is not None:
                for v in opt.variables:  # iteration count and Adam moments; not the learning rate
                    if v.path.endswith(("/iteration", "_momentum", "_velocity")):
                        v.assign(tf.zeros_like(v))
        self.seed_gen.state.assign(tf.cast([seed, 0], self.seed_gen.state.dtype))
        self.seed = seed

    def start(self):
        """Soft rounding from the loaded kernels (α with ``h(α)`` = the fractional part) and dropping
        with the config's ``prob``, each input quantizer on its own stream from the loaded seed."""
        for layer, rounding in zip(self.weight_layers, self.roundings):
            rounding.start(layer.float_kernel_and_bias()[0], layer.weight_quantizer.positive_step())
        for drop, seed in zip(self.drops, unit_seeds(self.seed, len(self.drops))):
            drop.start(self.config.prob, seed)

    def finish(self):
        """Store the hard-rounded kernels (rounding back to nearest) and stop dropping."""
        for layer, rounding in zip(self.weight_layers, self.roundings):
            kernel = layer.float_kernel_and_bias()[0]
            kernel.assign(rounding.hard_kernel(kernel, layer.weight_quantizer))
            rounding.stop()
        for drop in self.drops:
            drop.prob.assign(1.0)

    def store(self, qmodel, unit):
        """Copy the workspace variables back into ``unit``'s layers."""
        for model_layer, work in self._pairs(qmodel, unit):
            _copy_variables(work, model_layer)

    def _step(self, t, x_quant, x_fp, target):
        """One optimisation step at 1-based iteration ``t``; -> (L_rec, λ·round loss)."""
        config = self.config
        b = keras.random.randint((), 0, target.shape[0], seed=self.seed_gen)
        xs = [x[b] for x in x_quant]
        if config.prob < 1.0:
            xs = [drop_mix(x, xf[b], config.prob, self.seed_gen) for x, xf in zip(xs, x_fp)]
        with tf.GradientTape() as tape:
            rec = reconstruction_loss(self._run(xs), target[b])
            beta = adaround.beta_schedule(t, config.iters, config.warm_up)
            reg = tf.where(tf.cast(t, tf.float32) >= config.warm_up * config.iters,
                           config.reg_lambda * adaround.round_loss(self.alphas, beta), 0.0)
            loss = rec + reg
        grads = tape.gradient(loss, self.alphas + self.scales)
        self.opt_w.apply_gradients(zip(grads[:len(self.alphas)], self.alphas))
        if self.opt_a is not None:
            self.opt_a.apply_gradients(zip(grads[len(self.alphas):], self.scales))
        return rec, reg

    def evaluate(self, cache):
        """Mean ``L_rec`` over all cached batches, no dropping."""
        losses = [float(reconstruction_loss(self.forward([x[b] for x in cache.x_quant]), cache.target[b]))
                  for b in range(cache.num_batches)]
        return float(np.mean(losses))
