"""MRECG (Ma et al., CVPR 2023): mixed reconstruction granularity by merging adjacent units.

What the paper/released code gives (SPEC Part C §6): base units = BRECQ blocks; the top-k
adjacent pairs by a "capacity differential" are merged and optimised jointly (k = 2 / 4 / 7
for ResNet-18 / ResNet-50 / MobileNetV2); released schemes are fixed lists (``RELEASED_SCHEMES``).
The search code is **not public**; the selection rules below are **ours**, reconstructed from
the paper's figures (SPEC §6.4):

* oscillation: a boundary ``(i, i+1)`` oscillates when ``s_i > s_{i+1}`` (score = loss);
  :func:`select_oscillation` merges the top-k positive drops in one shot,
  :func:`select_greedy` merges the largest drop, scores a merged group by its last unit,
  and repeats k times (reproduces the released MobileNetV2 scheme from the BRECQ losses).
* data-dependent ("loss"): scores = per-unit ``L_rec`` of a first QDrop pass.
* neither rule merges a unit holding the 8-bit first or last layer (the stem, the classifier):
  no released scheme does (§6.2). Without this rule the loss-based selection on ResNet-18
  merged stage 4 with the classifier (``[0..6, (7, 8, 9)]``) at W4A4 and W2A4, because the
  8-bit classifier's loss is far below stage 4's; see docs/ptq.md.
* data-free ("ModCap"): ``C = Σ_conv numel(W) · bits · f(stride)`` with ``f(s) = 1/s`` (ours:
  a stride-s conv sees 1/s of the positions per axis; pluggable), scores ``-log C`` so a
  capacity jump ``C_{i+1} > C_i`` is a predicted loss drop; only pairs of multi-layer units
  (blocks, "topological homogeneity") not holding the 8-bit first/last layer are candidates.
"""

import math

import numpy as np

RELEASED_SCHEMES = {
    "resnet18": [1, 2, (3, 3), (4, 4), 5, 6, 7, 8],
    "resnet50": [1, 2, 3, (4, 4), 5, 6, (7, 7, 7), 8, 9, 10, (11, 11), 12, 13, 14],
    "mobilenetv2": [1, 2, (3, 3), 4, (5, 5), 6, (7, 7, 7), (8, 8, 8), 9, (10, 10), 11],
    "regnetx_600m": [1, 2, 3, 4, (5, 5, 5), 6, 7, (8, 8), 9, 10, 11, 12, (13, 13), 14],
}

DECIMALS = 9  # differentials are rounded so exact ties stay ties (then the earliest wins)


def default_topk(num_units):
    """k for a model without the paper's (``ModelDefaults.mrecg_topk`` None): ``max(1, num_units // 5)`` (ours)."""
    return max(1, num_units // 5)


def inverse_stride(stride):
    """Default stride factor ``f(s) = 1/s`` of ModCap."""
    return 1.0 / stride


def modcap(unit, bits_of, stride_factor=inverse_stride):
    """Data-free capacity ``Σ numel(W) · bits · f(stride)`` over the unit's Conv2D/Dense.

    ``bits_of(op) -> int``; Dense layers count as stride 1.
    """
    total = 0.0
    for op in unit.weight_ops:
        layer = op.float_layer
        stride = getattr(layer, "strides", (1,))[0]
        total += math.prod(layer.kernel.shape) * bits_of(op) * stride_factor(stride)
    return total


def groups_from_boundaries(num_units, boundaries):
    """Merge unit ``i`` with ``i+1`` for every ``i`` in ``boundaries`` -> list of index lists."""
    groups = [[0]]
    for i in range(1, num_units):
        if i - 1 in boundaries:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _drops(scores):
    return np.round(np.asarray(scores[:-1], float) - np.asarray(scores[1:], float), DECIMALS)


def select_oscillation(scores, k, allowed=None):
    """One shot: boundaries ``i`` with ``s_i > s_{i+1}``, the k largest drops (ties: earliest)."""
    drops = _drops(scores)
    order = sorted((i for i in range(len(drops)) if drops[i] > 0 and (allowed is None or allowed[i])),
                   key=lambda i: (-drops[i], i))
    return sorted(order[:k])


def select_greedy(scores, k, allowed=None):
    """k times: merge the boundary between groups with the largest positive drop; a group scores
    as its last unit. Returns the selected unit boundaries (sorted)."""
    n = len(scores)
    selected = set()
    for _ in range(k):
        groups = groups_from_boundaries(n, selected)
        best = None
        for a, b in zip(groups[:-1], groups[1:]):
            i = a[-1]
            if allowed is not None and not allowed[i]:
                continue
            drop = round(float(scores[a[-1]]) - float(scores[b[-1]]), DECIMALS)
            if drop > 0 and (best is None or drop > best[0]):
                best = (drop, i)
        if best is None:
            break
        selected.add(best[1])
    return sorted(selected)


def holds_edge(unit, edge_ops):
    """Whether ``unit`` holds one of ``edge_ops`` (op indices of the 8-bit first/last layers)."""
    return any(op.index in edge_ops for op in unit.ops)


def mergeable_boundaries(units, edge_ops, blocks_only=False):
    """``allowed[i]``: whether units ``i`` and ``i+1`` may merge: neither holds an edge op (and,
    with ``blocks_only``, both have >= 2 weight layers)."""
    def candidate(u):
        return not holds_edge(u, edge_ops) and (not blocks_only or len(u.weight_ops) >= 2)

    return [candidate(a) and candidate(b) for a, b in zip(units[:-1], units[1:])]


def modcap_groups(units, bits_of, k, stride_factor=inverse_stride, rule=select_oscillation,
                  edge_ops=()):
    """Groups from data-free ModCap; ``edge_ops``: op indices of the 8-bit first/last layers."""
    caps = [modcap(u, bits_of, stride_factor) for u in units]
    allowed = mergeable_boundaries(units, edge_ops, blocks_only=True)
    boundaries = rule([-math.log(c) for c in caps], k, allowed)
    return groups_from_boundaries(len(units), boundaries), caps


def loss_groups(losses, k, rule=select_greedy, allowed=None):
    """Groups from the per-unit losses of a first reconstruction pass (data-dependent);
    ``allowed``: see :func:`mergeable_boundaries` (None: every boundary)."""
    return groups_from_boundaries(len(losses), rule(losses, k, allowed))
