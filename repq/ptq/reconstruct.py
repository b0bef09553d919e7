"""Per-unit reconstruction: the ``tf.function`` + ``tf.GradientTape`` loop of SPEC Part C §3/§8.

For one unit: inputs come from the quantized model (previous units already hard-rounded),
targets from the FP model. AdaRound α of every weight layer in the unit is trained with
Adam(1e-3); with ``learn_scales`` the input steps of the unit's wrappers are trained
with Adam(CosineDecay(4e-5 -> 0)). Loss ``L_rec + λ Σ (1 - |2h(α) - 1|^β)``. With ``prob < 1``
(QDrop) the unit input and every input quantizer inside the unit mix quantized and FP
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
from repq.ptq.unit_step import UnitStep, signature


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


def reconstruct_unit(qmodel, unit, cache, config, seed=0, on_step=None, steps=None):
    """Optimise one unit in place; returns ``{"loss_init", "loss", "seconds", "iters_per_s",
    "first_step_s", "traced", "curve"}`` (``iters_per_s`` leaves out the first step, which traces the step
    function unless a trace of the same signature was reused; ``traced``: whether it did; ``curve``:
    ``{"step": [...], "rec": [...]}``, the training ``L_rec`` of the step's batch (soft rounding, QDrop
    dropping) at about 20 evenly spaced steps, to see whether the loss has stopped falling).

    ``loss_init`` is ``L_rec`` with round-to-nearest weights, ``loss`` after hard rounding,
    both on the whole cache without dropping. Every random stream of the unit (batch sampling,
    QDrop masks of its input and of its activation quantizers) starts from ``seed``, so the
    result depends only on the weights before the unit and ``seed`` (exact resume).
    ``on_step()``, if given, is called after every optimisation step (e.g. to stop on a signal).
    ``steps``: dict signature -> :class:`UnitStep` shared across calls (None: trace afresh).
    """
    key = signature(qmodel, unit, cache, config)
    traced = steps is None or key not in steps
    program = UnitStep(qmodel, unit, cache, config) if traced else steps[key]
    if steps is not None:
        steps[key] = program
    program.load(qmodel, unit, seed)
    loss_init = program.evaluate(cache)
    program.start()
    bar = keras.utils.Progbar(config.iters, verbose=config.verbose, stateful_metrics=["rec", "reg"])
    start = time.perf_counter()
    every = max(1, config.iters // 20)
    curve = {"step": [], "rec": []}
    for t in range(1, config.iters + 1):
        rec, reg = program.step(tf.constant(t, tf.int64), cache.x_quant, cache.x_fp, cache.target)
        if t == 1:
            first_step = time.perf_counter() - start  # includes tracing the step unless shared
        if on_step is not None:
            on_step()
        if t % every == 0 or t == config.iters:
            curve["step"].append(t)
            curve["rec"].append(float(rec))
            if config.verbose:
                bar.update(t, [("rec", curve["rec"][-1]), ("reg", float(reg))])
    seconds = time.perf_counter() - start
    # steady-state rate: the first step (tf.function tracing) is left out when there are others
    rate = ((config.iters - 1) / max(seconds - first_step, 1e-9) if config.iters > 1
            else 1.0 / max(seconds, 1e-9))
    program.finish()
    loss = program.evaluate(cache)
    program.store(qmodel, unit)
    return {"loss_init": loss_init, "loss": loss, "seconds": seconds, "iters_per_s": rate,
            "first_step_s": first_step, "traced": traced, "curve": curve}


def reconstruct_units(qmodel, units, batches, config, seed=0, log=print, checkpoint=None):
    """Reconstruct ``units`` in order; list of per-unit dicts (:func:`reconstruct_unit`'s keys and
    ``name``, ``cache_s``: seconds carrying the activations for it, ``carry_mb``: MiB of carried
    tensors while it was optimised).

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
    carry, steps = Carry(qmodel, batches), {}
    for unit in units[:len(results)]:
        carry.advance(unit)
    for i in range(len(results), len(units)):
        unit = units[i]
        if config.verbose:
            log(f"unit {i + 1}/{len(units)}: {unit.name}")
        start = time.perf_counter()
        cache = carry.cache(unit, with_fp=config.prob < 1.0)
        carry_mb = carry.live_bytes() / 2**20
        cache_s = time.perf_counter() - start
        result = reconstruct_unit(qmodel, unit, cache, config, seed=seed * 7919 + i,
                                  on_step=checkpoint.check_signal if checkpoint else None, steps=steps)
        del cache
        start = time.perf_counter()
        carry.advance(unit)
        result.update(name=unit.name, cache_s=cache_s + time.perf_counter() - start, carry_mb=carry_mb)
        results.append(result)
        if checkpoint:
            checkpoint.save(qmodel.model, names, results)
    return results
