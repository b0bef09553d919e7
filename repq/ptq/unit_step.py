"""One traced reconstruction step shared by every unit of the same signature.

A :class:`UnitStep` owns private copies ("workspace") of a unit's layers and activation
quantizers, two Adam optimizers and a seed generator, and traces the optimisation step and the
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
from repq.ptq.qdrop import drop_mix
from repq.ptq.graph import run_ops


def reconstruction_loss(y_hat, y):
    """``mean over batch/spatial of Σ_channels (ŷ - y)^2`` (NHWC or (N, C))."""
    return ops.mean(ops.sum(ops.square(y_hat - y), axis=-1))


def _config_key(layer):
    """Class and config of ``layer`` without its name, initial seed and the name of its input quantizer
    (its variables are copied; the wiring is part of the signature)."""
    config = layer.get_config()
    return type(layer).__name__, repr({k: v for k, v in config.items() if k not in ("name", "seed", "input_quantizer")})


def signature(qmodel, unit, cache, config):
    """Hashable key: units with equal keys run the same computation on their own variables."""
    refs = {t: f"in{k}" for k, t in enumerate(unit.inputs)}
    ops_key = []
    for j, op in enumerate(unit.ops):
        args, kwargs = op.node.arguments.fill_in(refs)
        quant = qmodel.act_quants.get(op.output)
        ops_key.append((_config_key(qmodel.layers[op.index]), repr((args, kwargs)),
                        _config_key(quant) if quant is not None else None,
                        op.output == unit.output))
        refs[op.output] = f"op{j}"
    shapes = tuple(tuple(x.shape) for x in cache.x_quant + [cache.target])
    return tuple(ops_key), shapes, cache.x_fp is not None, dataclasses.astuple(config)


def _clone(layer):
    return layer.__class__.from_config(layer.get_config())


def _copy_variables(src, dst):
    for a, b in zip(src.variables, dst.variables, strict=True):
        b.assign(a)


class UnitStep:
    """Traced step/evaluation on a workspace copy of ``unit`` (a template for its signature).

    Call :meth:`load` with the unit to optimise, then :meth:`step` / :meth:`evaluate`, then
    :meth:`store`. Cache tensors are ``(num_batches, batch, ...)`` arguments, not captures.
    """

    def __init__(self, qmodel, unit, cache, config):
        self.unit, self.config = unit, config
        self.layers = {op.index: _clone(qmodel.layers[op.index]) for op in unit.ops}
        self.quants = {op.output: _clone(qmodel.act_quants[op.output])
                       for op in unit.ops if op.output in qmodel.act_quants}
        self._run([x[0] for x in cache.x_quant])  # builds the copies on real shapes, eagerly
        self.weight_layers = [self.layers[op.index] for op in unit.weight_ops]
        self.quant_list = list(self.quants.values())
        self.alphas = [layer.alpha for layer in self.weight_layers]
        self.scales = [q.scale for q in self.quant_list] if config.learn_scales else []
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
        def post(op, y):
            quant = self.quants.get(op.output)
            return quant(y) if quant is not None else y

        values = dict(zip(self.unit.inputs, xs))
        return run_ops(self.unit.ops, values, lambda op: self.layers[op.index], post)[self.unit.output]

    def _pairs(self, qmodel, unit):
        """(model layer, workspace layer) for every layer and quantizer of ``unit``."""
        pairs = [(qmodel.layers[op.index], self.layers[t_op.index])
                 for op, t_op in zip(unit.ops, self.unit.ops)]
        pairs += [(qmodel.act_quants[op.output], self.quants[t_op.output])
                  for op, t_op in zip(unit.ops, self.unit.ops) if t_op.output in self.quants]
        return pairs

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

    def store(self, qmodel, unit):
        """Copy the workspace variables back into ``unit``'s layers and quantizers."""
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
