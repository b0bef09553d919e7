"""Per-unit reconstruction: the ``tf.function`` + ``tf.GradientTape`` loop of SPEC Part C §3/§8.

For one unit: inputs come from the quantized model (previous units already hard-rounded),
targets from the FP model. AdaRound α of every weight layer in the unit is trained with
Adam(1e-3); with ``learn_scales`` the steps of the unit's activation quantizers are trained
with Adam(CosineDecay(4e-5 -> 0)). Loss ``L_rec + λ Σ (1 - |2h(α) - 1|^β)``. With ``prob < 1``
(QDrop) the unit input and every activation quantizer inside the unit mix quantized and FP
values elementwise. At the end the weights are hard-rounded and dropping is switched off.
"""

import dataclasses
import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from repq.ptq import adaround
from repq.ptq.carry import Carry, UnitCache
from repq.ptq.fake_quant import drop_mix
from repq.ptq.qmodel import NEAREST


@dataclasses.dataclass
class ReconConfig:
    """Hyper-parameters of one reconstruction pass (defaults: MQBench/MRECG configs).

    iters: optimisation steps per unit. reg_lambda: λ (0.01; 0.1 for MobileNetV2).
    prob: QDrop keep-quantized probability (1.0 = BRECQ, no dropping).
    learn_scales: train activation steps (BRECQ/QDrop) or keep them (AdaRound).
    """

    iters: int = 20000
    reg_lambda: float = 0.01
    warm_up: float = adaround.WARM_UP
    prob: float = 1.0
    learn_scales: bool = True
    alpha_lr: float = 1e-3
    scale_lr: float = 4e-5
    verbose: int = 1


def reconstruction_loss(y_hat, y):
    """``mean over batch/spatial of Σ_channels (ŷ - y)^2`` (NHWC or (N, C))."""
    return ops.mean(ops.sum(ops.square(y_hat - y), axis=-1))


def cache_unit(qmodel, unit, batches, with_fp):
    """Run the quantized prefix and the FP model from the network input over ``batches`` (list of
    equal-size numpy batches): one unit in isolation, e.g. on held-out data (cost grows with the
    unit's depth; :func:`reconstruct_units` carries the activations forward instead)."""
    quant_fn = qmodel.quant_submodel(unit.inputs)
    fp_ids = (unit.inputs if with_fp else []) + [unit.output]
    fp_fn = qmodel.fp_submodel(fp_ids)
    xq, fp = [], []
    for x in batches:
        xq.append([ops.convert_to_numpy(v) for v in quant_fn(x)])
        fp.append([ops.convert_to_numpy(v) for v in fp_fn(x)])

    def stack(rows, i):
        return tf.constant(np.stack([r[i] for r in rows]))

    n_in = len(unit.inputs)
    return UnitCache([stack(xq, i) for i in range(n_in)],
                     [stack(fp, i) for i in range(n_in)] if with_fp else None,
                     stack(fp, len(fp_ids) - 1))


def unit_forward(qmodel, unit):
    """``f(list of input tensors) -> unit output`` on the quantized model's layers."""
    def forward(xs):
        values = dict(zip(unit.inputs, xs))
        return qmodel.run_ops(unit.ops, values)[unit.output]

    return forward


def evaluate_unit(forward, cache):
    """Mean ``L_rec`` of ``forward`` (a unit's tf.function) over all cached batches, no dropping."""
    losses = [float(reconstruction_loss(forward([x[b] for x in cache.x_quant]), cache.target[b]))
              for b in range(cache.num_batches)]
    return float(np.mean(losses))


def unit_seeds(seed, count):
    """``count`` int seeds (< 2**31) derived from ``seed``, one per activation quantizer of a unit."""
    return [int(s >> 1) for s in np.random.SeedSequence([seed, 1]).generate_state(count)] if count else []


def reconstruct_unit(qmodel, unit, cache, config, seed=0, on_step=None):
    """Optimise one unit in place; returns ``{"loss_init", "loss", "seconds", "iters_per_s",
    "first_step_s"}`` (``iters_per_s`` leaves out the first step, which traces the step function).

    ``loss_init`` is ``L_rec`` with round-to-nearest weights, ``loss`` after hard rounding,
    both on the whole cache without dropping. Every random stream of the unit (batch sampling,
    QDrop masks of its input and of its activation quantizers) starts from ``seed``, so the
    result depends only on the weights before the unit and ``seed`` (exact resume).
    ``on_step()``, if given, is called after every optimisation step (e.g. to stop on a signal).
    """
    weight_layers = [qmodel.weight_layers[op.index] for op in unit.weight_ops]
    quants = [qmodel.act_quants[op.output] for op in unit.ops if op.output in qmodel.act_quants]
    forward = unit_forward(qmodel, unit)
    eval_forward = tf.function(forward, autograph=False)
    loss_init = evaluate_unit(eval_forward, cache)
    for layer in weight_layers:
        layer.start_adaround()
    for quant, quant_seed in zip(quants, unit_seeds(seed, len(quants))):
        quant.prob.assign(config.prob)
        quant.reseed(quant_seed)
    alphas = [layer.alpha for layer in weight_layers]
    scales = [q.scale for q in quants] if config.learn_scales else []
    opt_w = keras.optimizers.Adam(config.alpha_lr, epsilon=1e-8)
    opt_w.build(alphas)
    opt_a = None
    if scales:
        schedule = keras.optimizers.schedules.CosineDecay(config.scale_lr, config.iters, alpha=0.0)
        opt_a = keras.optimizers.Adam(schedule, epsilon=1e-8)
        opt_a.build(scales)
    seed_gen = keras.random.SeedGenerator(seed)
    warm = config.warm_up * config.iters
    drop = config.prob < 1.0

    @tf.function(autograph=False)
    def step(t):
        b = keras.random.randint((), 0, cache.num_batches, seed=seed_gen)
        xs = [x[b] for x in cache.x_quant]
        if drop:
            xs = [drop_mix(x, xf[b], config.prob, seed_gen) for x, xf in zip(xs, cache.x_fp)]
        with tf.GradientTape() as tape:
            rec = reconstruction_loss(forward(xs), cache.target[b])
            beta = adaround.beta_schedule(t, config.iters, config.warm_up)
            reg = tf.where(tf.cast(t, tf.float32) >= warm,
                           config.reg_lambda * adaround.round_loss(alphas, beta), 0.0)
            loss = rec + reg
        grads = tape.gradient(loss, alphas + scales)
        opt_w.apply_gradients(zip(grads[:len(alphas)], alphas))
        if opt_a is not None:
            opt_a.apply_gradients(zip(grads[len(alphas):], scales))
        return rec, reg

    bar = keras.utils.Progbar(config.iters, verbose=config.verbose, stateful_metrics=["rec", "reg"])
    start = time.perf_counter()
    every = max(1, min(100, config.iters // 20))
    for t in range(1, config.iters + 1):
        rec, reg = step(tf.constant(t, tf.int64))
        if t == 1:
            first_step = time.perf_counter() - start  # includes tracing ``step``
        if on_step is not None:
            on_step()
        if config.verbose and (t % every == 0 or t == config.iters):
            bar.update(t, [("rec", float(rec)), ("reg", float(reg))])
    seconds = time.perf_counter() - start
    # steady-state rate: the first step (tf.function tracing) is left out when there are others
    rate = ((config.iters - 1) / max(seconds - first_step, 1e-9) if config.iters > 1
            else 1.0 / max(seconds, 1e-9))
    for layer in weight_layers:
        layer.finalize()
        assert int(layer.state.numpy()) == NEAREST
    for quant in quants:
        quant.prob.assign(1.0)
    return {"loss_init": loss_init, "loss": evaluate_unit(eval_forward, cache),
            "seconds": seconds, "iters_per_s": rate, "first_step_s": first_step}


def reconstruct_units(qmodel, units, batches, config, seed=0, log=print, checkpoint=None):
    """Reconstruct ``units`` in order; list of per-unit dicts.

    Unit inputs and targets are carried forward (:class:`repq.ptq.carry.Carry`): each unit's ops
    run once on the FP side and once, after its reconstruction, on the quantized side.
    ``checkpoint`` (a :class:`repq.ptq.checkpoint.PassCheckpoint`, optional): the finished units
    of an earlier, interrupted call are loaded instead of redone (and only run forward), and every
    unit is checkpointed when it is done. Unit ``i`` is seeded with ``seed * 7919 + i``.
    """
    names = [unit.name for unit in units]
    results = checkpoint.restore(qmodel.model, names) if checkpoint else []
    if results and config.verbose:
        log(f"resuming after unit {len(results)}/{len(units)} (checkpoint {checkpoint.directory})")
    carry = Carry(qmodel, batches)
    for unit in units[:len(results)]:
        carry.advance(unit)
    for i in range(len(results), len(units)):
        unit = units[i]
        if config.verbose:
            log(f"unit {i + 1}/{len(units)}: {unit.name}")
        cache = carry.cache(unit, with_fp=config.prob < 1.0)
        result = reconstruct_unit(qmodel, unit, cache, config, seed=seed * 7919 + i,
                                  on_step=checkpoint.check_signal if checkpoint else None)
        result["name"] = unit.name
        results.append(result)
        del cache
        carry.advance(unit)
        if checkpoint:
            checkpoint.save(qmodel.model, names, results)
    return results
