"""Unit inputs and targets carried forward through the network, unit by unit (linear in depth).

Instead of re-running the quantized prefix and the FP model from the network input for every
unit, :class:`Carry` keeps the live tensors of both models over the calibration set and runs
only the ops of each unit once on each side: the FP side when the unit's targets are needed,
the quantized side after the unit is reconstructed (hard-rounded), so the next units see its
final weights. A tensor is freed once every op consuming it has run on that side, so memory
holds the tensors crossing the current unit boundary, not the whole net.

Every carried tensor is ``(num_batches, batch, ...)``; ops run eagerly, one calibration batch at
a time (no tracing). Units must come in execution order (every op of a unit after the ops
producing its inputs), as ``layer_units`` / ``block_units`` / ``merge_units`` give them.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from repq.ptq.graph import run_ops


@dataclasses.dataclass
class UnitCache:
    """Cached tensors of one unit, each ``(num_batches, batch, ...)``.

    x_quant: unit inputs from the quantized model; x_fp: the same tensors from the FP model
    (QDrop only, else None); target: FP output of the unit.
    """

    x_quant: list
    x_fp: list
    target: tf.Tensor

    @property
    def num_batches(self):
        return int(self.target.shape[0])


class _Side:
    """Live tensors of one model (quantized or FP): tensor id -> ``(num_batches, batch, ...)``."""

    def __init__(self, graph, values, layer_fn):
        self.graph, self.values, self.layer_fn = graph, values, layer_fn
        self.done = set()

    def run(self, ops, keep_ids=()):
        """Run ``ops`` (those not run yet, in order) batch by batch; keep the outputs still consumed
        and those in ``keep_ids``."""
        ops = [op for op in ops if op.index not in self.done]
        if not ops:
            return
        missing = {t for op in ops for t in op.inputs} - self.values.keys() - {op.output for op in ops}
        if missing:
            raise ValueError(f"ops {[op.name for op in ops][:3]}... need tensors not carried yet; "
                             "units must come in execution order.")
        self.done |= {op.index for op in ops}
        keep = [op.output for op in ops if op.output in keep_ids or self._live(op.output)]
        needed = {t for op in ops for t in op.inputs} & self.values.keys()
        rows = []
        for b in range(self._num_batches()):
            got = run_ops(ops, {t: self.values[t][b] for t in needed}, self.layer_fn)
            rows.append([got[t] for t in keep])
        for i, t in enumerate(keep):
            self.values[t] = tf.stack([row[i] for row in rows])
        for t in needed:
            if not self._live(t):
                del self.values[t]

    def run_before(self, unit):
        """Run every pending op outside ``unit`` that comes before its first op."""
        inside = {op.index for op in unit.ops}
        first = unit.ops[0].index
        self.run([op for op in self.graph.ops if op.index < first and op.index not in inside])

    def _live(self, tid):
        return any(c not in self.done for c in self.graph.consumers[tid])

    def _num_batches(self):
        return int(next(iter(self.values.values())).shape[0])


class Carry:
    """Quantized and FP activations of ``batches`` carried through ``qmodel`` (a QuantModel).

    ``batches``: list of equal-size numpy batches ``(batch, ...)`` of the (single) model input.
    Use per unit, in order: :meth:`cache` before reconstructing it, :meth:`advance` after.
    """

    def __init__(self, qmodel, batches):
        graph = qmodel.graph
        if len(graph.input_ids) != 1:
            raise TypeError(f"PTQ caching needs a single-input model, got {len(graph.input_ids)} inputs.")
        tid = graph.input_ids[0]
        x = tf.constant(np.stack(batches))
        self.fp = _Side(graph, {tid: x}, qmodel.fp_layer)
        self.quant = _Side(graph, {tid: x}, lambda op: qmodel.layers[op.index])

    def cache(self, unit, with_fp):
        """:class:`UnitCache` of ``unit``: quantized inputs (previous units
        as reconstructed), FP inputs (``with_fp``) and the FP output as target."""
        self.fp.run_before(unit)
        x_fp = [self.fp.values[t] for t in unit.inputs]
        self.fp.run(unit.ops, keep_ids=[unit.output])
        target = self.fp.values[unit.output]
        self.quant.run_before(unit)
        return UnitCache([self.quant.values[t] for t in unit.inputs], x_fp if with_fp else None, target)

    def advance(self, unit):
        """Run ``unit`` (already reconstructed or restored) on both sides: its output becomes live."""
        self.fp.run_before(unit)
        self.fp.run(unit.ops)
        self.quant.run_before(unit)
        self.quant.run(unit.ops)

    def live_bytes(self):
        """Bytes held by the carried tensors of both sides."""
        return sum(int(np.prod(v.shape)) * v.dtype.size
                   for side in (self.fp, self.quant) for v in side.values.values())
