"""Reconstruction units: partitions of a :class:`Graph` into ordered groups of ops.

* ``layer_units`` (AdaRound): each Conv2D/Dense plus the single-input, weight-free ops that
  follow it while its output has one consumer (an ``Add`` ends the unit).
* ``block_units`` (BRECQ, MQBench ``extract_block`` rules): the graph is cut at every tensor
  that all paths pass through; a segment with a branch (residual block) is one unit, weight-free
  segments (post-add ReLU, pooling, dropout) join the unit before them, and consecutive
  single-layer segments are stacked up to 3 layers (stopping before a residual block).
  ResNet-18 -> stem, 8 BasicBlocks, classifier (10 units); MobileNetV2 -> stem + first IR
  block, 16 IR blocks, head conv + classifier (18 units).
* ``merge_units(units, scheme)`` (MRECG): groups of adjacent units optimised jointly.

Each unit knows its input tensor ids (produced outside it) and its single output tensor id.
"""

import ast
import dataclasses


@dataclasses.dataclass
class Unit:
    """An ordered group of ops with inputs ``inputs`` (tensor ids) and one output tensor id."""

    ops: list
    inputs: list
    output: int

    @property
    def name(self):
        weights = [op.name for op in self.ops if op.has_weights]
        return weights[0] if len(weights) == 1 else f"{weights[0]}..{weights[-1]}"

    @property
    def weight_ops(self):
        return [op for op in self.ops if op.has_weights]


def make_unit(graph, ops):
    """A :class:`Unit` from ops (any order); raises if it has several outputs."""
    ops = sorted(ops, key=lambda op: op.index)
    inside = {op.index for op in ops}
    produced = {op.output for op in ops}
    inputs = []
    for op in ops:
        inputs += [t for t in op.inputs if t not in produced and t not in inputs]
    outputs = [op.output for op in ops
               if op.output in graph.output_ids or any(c not in inside for c in graph.consumers[op.output])]
    if len(outputs) != 1:
        raise ValueError(f"unit {[op.name for op in ops]} has {len(outputs)} outputs; units need one.")
    return Unit(ops, inputs, outputs[0])


def layer_units(graph):
    """One unit per weight layer (AdaRound granularity)."""
    units, current = [], None
    for op in graph.ops:
        if op.has_weights:
            current = [op]
            units.append(current)
        elif (current is not None and op.inputs == [current[-1].output]
              and len(graph.consumers[current[-1].output]) == 1):
            current.append(op)
        else:
            current = None
    return [make_unit(graph, ops) for ops in units]


def _segments(graph):
    """Op lists between cut tensors (tensors every path passes through)."""
    pending = {t: len(c) for t, c in graph.consumers.items()}
    live = {t for t in graph.input_ids if pending[t]}
    segments, current = [], []
    for op in graph.ops:
        current.append(op)
        for t in op.inputs:
            pending[t] -= 1
            if pending[t] == 0:
                live.discard(t)
        if pending[op.output]:
            live.add(op.output)
        if live <= {op.output}:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def block_units(graph):
    """BRECQ units (see module docstring), in execution order."""
    segments = []
    for seg in _segments(graph):
        if not any(op.has_weights for op in seg) and segments:
            segments[-1] = segments[-1] + seg  # trailing weight-free ops join the unit before
        elif segments and not any(op.has_weights for op in segments[-1]):
            segments[-1] = segments[-1] + seg  # leading weight-free ops join the next unit
        else:
            segments.append(seg)

    def single(seg):
        return sum(op.has_weights for op in seg) == 1 and all(len(op.inputs) == 1 for op in seg)

    units, i = [], 0
    while i < len(segments):
        group, i = list(segments[i]), i + 1
        if single(group):
            depth = 1
            while depth < 3 and i < len(segments) and single(segments[i]):
                group += segments[i]
                depth, i = depth + 1, i + 1
        units.append(group)
    return [make_unit(graph, ops) for ops in units]


def parse_scheme(text):
    """``"0,(1,2),3"`` or ``"[1, 2, (3,3), ...]"`` -> list of ints / tuples (SPEC Part C §6.2)."""
    text = text.strip()
    if not text.startswith("["):
        text = f"[{text}]"
    try:
        scheme = ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise ValueError(f"cannot parse scheme {text!r}: {err}") from None
    if not all(isinstance(e, int) or (isinstance(e, tuple) and len(e) >= 1) for e in scheme):
        raise ValueError(f"scheme entries must be ints or tuples, got {text!r}.")
    return scheme


def scheme_groups(scheme, num_units):
    """Scheme -> list of lists of consecutive unit indices; tuple entries of length m merge m units.

    Entry values are labels only (MRECG convention). Raises if the sizes do not add up.
    """
    sizes = [1 if isinstance(e, int) else len(e) for e in scheme]
    if sum(sizes) != num_units:
        raise ValueError(f"scheme {scheme} covers {sum(sizes)} units, the model has {num_units}.")
    groups, start = [], 0
    for size in sizes:
        groups.append(list(range(start, start + size)))
        start += size
    return groups


def groups_to_scheme(groups):
    """Inverse of :func:`scheme_groups`: ints for singletons, tuples of unit indices otherwise."""
    return [g[0] if len(g) == 1 else tuple(g) for g in groups]


def merge_units(graph, units, groups):
    """One unit per group of adjacent base units."""
    return [make_unit(graph, [op for i in group for op in units[i].ops]) for group in groups]
