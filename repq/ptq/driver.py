"""``quantize_ptq``: post-training quantization of a (rep-block) Keras model.

Pipeline: reparametrize (BN folding, rep blocks merged) -> :class:`QuantModel` -> observers
on the calibration data -> per-unit reconstruction for the chosen method.
"""

import time

import keras
import numpy as np

import repq
from repq.data.validate import check_images
from repq.models import model_defaults
from repq.ptq import mrecg
from repq.ptq.checkpoint import RunCheckpoint
from repq.ptq.qmodel import QuantModel
from repq.ptq.reconstruct import ReconConfig, reconstruct_units
from repq.ptq.units import block_units, groups_to_scheme, layer_units, merge_units, scheme_groups
from repq.quantizers import integer_range

METHODS = ("rtn", "adaround", "brecq", "qdrop", "mrecg_modcap", "mrecg_loss")
QDROP_PROB = 0.5


def as_batches(calib_data, batch_size, input_shape=None):
    """Calibration data (array ``(N, ...)``, list of batches, or dataset of x / (x, y)) ->
    list of equal-size float32 numpy batches (a remainder is dropped when ``N >= batch_size``).

    ``input_shape``: the model's per-example input shape (None entries: any size); images of
    another shape, of a non-float dtype (e.g. uint8 pixels, not preprocessed) or with NaN/Inf
    raise ``ValueError`` / ``TypeError``.
    """
    if isinstance(calib_data, np.ndarray):
        parts = [calib_data]
    else:
        parts = [np.asarray(b[0] if isinstance(b, (tuple, list)) else b) for b in calib_data]
    parts = [p for p in parts if p.size]
    if not parts:
        raise ValueError("calibration data is empty.")
    for part in parts:
        check_images(part, input_shape, what="calibration images")
    x = np.concatenate(parts).astype(np.float32)
    size = min(batch_size, len(x))
    return [x[i:i + size] for i in range(0, len(x) - size + 1, size)]


def quantize_ptq(model, calib_data, method, weight_bits=4, act_bits=4, iters=20000, batch_size=32,
                 reg_lambda=None, scheme=None, topk=None, selection=None, stride_factor=None,
                 baseline_losses=None, seed=0, verbose=1, checkpoint_dir=None, crash_after_units=None):
    """Quantize ``model`` after training -> ``(quantized keras.Model, report dict)``.

    Args:
      model: functional Keras model (rep blocks are merged first; the input is not modified).
      calib_data: calibration inputs (see :func:`as_batches`), e.g. 1024 training images.
      method: "rtn" | "adaround" | "brecq" | "qdrop" | "mrecg_modcap" | "mrecg_loss".
      weight_bits, act_bits: 2..8 (first/last layer and their inputs stay 8-bit).
      iters: reconstruction steps per unit; batch_size: samples per step.
      reg_lambda: AdaRound λ (default: the model's ``repq.models.model_defaults``, 0.1 for MobileNetV2,
        else 0.01).
      scheme: MRECG scheme (list, e.g. ``[0, (1, 2), 3]``) overriding the search.
      topk: merges for MRECG (default: the model's ``repq.models.model_defaults``, 2 for ResNet-18 and 7
        for MobileNetV2, else ``mrecg.default_topk``).
      selection: MRECG rule, a function ``(scores, k, allowed) -> boundaries``.
      stride_factor: ModCap ``f(stride)`` (default ``1/stride``).
      baseline_losses: per-unit losses of an earlier QDrop pass for ``mrecg_loss`` (skips the search).
      seed: seeds Keras/TF/numpy and every random stream (dropping, batch sampling); unit ``i``
        of a pass uses its own streams seeded from ``seed`` and ``i``.
      checkpoint_dir: if set, the run is resumable (:mod:`repq.ptq.checkpoint`): the calibrated
        model and every reconstructed unit are checkpointed there, and calling again with the
        same arguments and directory resumes after the last finished unit, ending with the same
        weights as an uninterrupted call. SIGTERM/SIGINT then stop the run after the current
        optimisation step with ``repq.training.TrainingInterrupted``.
      crash_after_units: test hook (with ``checkpoint_dir``): ``repq.training.SimulatedCrash``
        after that many units of this call.

    Report keys: method, bits, units, unit_losses, unit_losses_init, unit_seconds, iters_per_s
    (steady state, first step left out), unit_first_step_s (first step incl. tracing unless
    shared), unit_traced (whether the unit traced its step or reused one of the same signature),
    unit_cache_s (carrying its inputs/targets forward), unit_carry_mb (carried tensors, MiB),
    unit_loss_curves (per unit ``{"step", "rec"}``: training L_rec at ~20 steps; None for units
    restored from a checkpoint written before curves were recorded),
    scheme, search_time_s, baseline_unit_losses, search_pass_kept (MRECG's loss search selected no merge,
    so its pass is the final one and is not run twice), ptq_time_s (this call only), resumed_units (units
    loaded from checkpoints; their times are those of the earlier call).
    """
    from repq.checks import check_built_model, check_not_quantized

    check_built_model(model)
    check_not_quantized(model, fix="PTQ takes the floating-point model, e.g. train.py's fp_model.keras")
    if method not in METHODS:
        raise ValueError(f"unknown PTQ method {method!r}; choose one of {', '.join(METHODS)}.")
    integer_range(weight_bits, True, "weight_bits"), integer_range(act_bits, False, "act_bits")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}.")
    batches = as_batches(calib_data, batch_size, tuple(model.inputs[0].shape[1:]))
    with RunCheckpoint(checkpoint_dir, crash_after_units) as run:
        qmodel, report = _quantize(model, batches, method, weight_bits, act_bits, iters, batch_size,
                                   reg_lambda, seed, verbose, run,
                                   dict(scheme=scheme, topk=topk, selection=selection,
                                        stride_factor=stride_factor, baseline_losses=baseline_losses))
    report["resumed_units"] = run.units_restored
    return qmodel, report


def _quantize(model, batches, method, weight_bits, act_bits, iters, batch_size, reg_lambda, seed, verbose,
              run, mrecg_args):
    """The body of :func:`quantize_ptq` on checked arguments; ``run``: its :class:`RunCheckpoint`."""
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    plain = repq.reparametrize(model)
    qm = QuantModel(plain, weight_bits, act_bits)
    if verbose:
        print(f"observer calibration: {sum(len(b) for b in batches)} images, {len(qm.weight_layers)} quantized "
              f"layers", flush=True)
    run.calibrate(qm, batches, verbose)
    defaults = model_defaults(model)
    lam = defaults.adaround_lambda if reg_lambda is None else reg_lambda
    report = {"method": method, "weight_bits": weight_bits, "act_bits": act_bits, "iters": iters,
              "batch_size": batch_size, "calib_size": sum(len(b) for b in batches), "reg_lambda": lam,
              "seed": seed, "scheme": None, "search_time_s": None, "baseline_unit_losses": None}
    if method == "rtn":
        report.update(units=[], unit_losses=[], unit_losses_init=[], unit_seconds=[], iters_per_s=[],
                      unit_first_step_s=[], unit_traced=[], unit_cache_s=[], unit_carry_mb=[], unit_loss_curves=[],
                      ptq_time_s=time.perf_counter() - start)
        return qm.model, report
    config = ReconConfig(iters=iters, reg_lambda=lam, verbose=verbose,
                         prob=QDROP_PROB if method in ("qdrop", "mrecg_modcap", "mrecg_loss") else 1.0,
                         learn_scales=method != "adaround")
    if method == "adaround":
        units = layer_units(qm.graph)
    else:
        units = block_units(qm.graph)
    search_pass = None
    if method.startswith("mrecg"):
        topk = defaults.mrecg_topk if mrecg_args["topk"] is None else mrecg_args["topk"]
        units, search_pass = _mrecg_units(qm, units, batches, config, seed=seed, report=report,
                                          checkpoint=run.stage("search"), **{**mrecg_args, "topk": topk})
    report["search_pass_kept"] = search_pass is not None
    results = search_pass or reconstruct_units(qm, units, batches, config, seed=seed, checkpoint=run.stage("units"))
    report.update(units=[r["name"] for r in results], unit_losses=[r["loss"] for r in results],
                  unit_losses_init=[r["loss_init"] for r in results],
                  unit_seconds=[r["seconds"] for r in results],
                  iters_per_s=[r["iters_per_s"] for r in results],
                  unit_first_step_s=[r["first_step_s"] for r in results],
                  unit_traced=[r.get("traced", True) for r in results],
                  unit_cache_s=[r.get("cache_s", 0.0) for r in results],
                  unit_carry_mb=[r.get("carry_mb", 0.0) for r in results],
                  unit_loss_curves=[r.get("curve") for r in results],
                  unit_sizes=[len(u.weight_ops) for u in units],
                  ptq_time_s=time.perf_counter() - start)
    return qm.model, report


def _mrecg_units(qm, units, batches, config, scheme, topk, selection, stride_factor,
                 baseline_losses, seed, report, checkpoint=None):
    """``(merged units, kept pass)`` for MRECG (explicit scheme, ModCap or a first QDrop pass); fills the report.

    ``checkpoint``: PassCheckpoint of the first QDrop pass (resumable like the final pass). When that
    pass selects no merge, the final pass would repeat it step for step (same units, weights and
    seeds): its reconstructed weights stay in the model and its per-unit results are returned as
    the kept pass (None otherwise: the weights are restored for the final pass).
    """
    k = topk if topk is not None else mrecg.default_topk(len(units))
    start = time.perf_counter()
    search_pass = None
    if scheme is not None:
        groups = scheme_groups(scheme, len(units))
    elif report["method"] == "mrecg_modcap":
        groups, caps = mrecg.modcap_groups(
            units, lambda op: qm.weight_layers[op.index].weight_bits, k,
            stride_factor or mrecg.inverse_stride, selection or mrecg.select_oscillation, qm.edge_ops)
        report["modcap"] = caps
    else:
        if baseline_losses is None:
            snapshot = qm.model.get_weights()
            search_pass = reconstruct_units(qm, units, batches, config, seed=seed, checkpoint=checkpoint)
            baseline_losses = [r["loss"] for r in search_pass]
        if len(baseline_losses) != len(units):
            raise ValueError(f"baseline_losses has {len(baseline_losses)} entries, the model has "
                             f"{len(units)} units.")
        groups = mrecg.loss_groups(baseline_losses, k, selection or mrecg.select_greedy,
                                   mrecg.mergeable_boundaries(units, qm.edge_ops))
        report["baseline_unit_losses"] = list(baseline_losses)
        if search_pass is not None and any(len(g) > 1 for g in groups):
            qm.model.set_weights(snapshot)
            search_pass = None
    report["search_time_s"] = time.perf_counter() - start
    report["scheme"] = groups_to_scheme(groups)
    report["base_units"] = [u.name for u in units]
    return merge_units(qm.graph, units, groups), search_pass
