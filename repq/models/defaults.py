"""``ModelDefaults``: how repq quantizes a zoo model unless told otherwise (timm's ``default_cfg``).

Each zoo model's registry entry carries one (``@register_model(defaults=...)``); a model that
is not from the zoo gets :data:`GENERIC_DEFAULTS`.
"""

import dataclasses

from repq.qat.rules import PrecisionRule


@dataclasses.dataclass(frozen=True)
class ModelDefaults:
    """Per-model settings of ``quantize_model``, ``quantize_ptq`` and ``train.py``.

    Attributes:
      precision_rule: which first/last layers keep 8 bits (:class:`repq.qat.PrecisionRule`).
      keep_bn: names of rep blocks that keep true BatchNorm under BNEst.
      mrecg_topk: MRECG merges k; None: ``max(1, units // 5)`` (``repq.ptq.mrecg.default_topk``).
      adaround_lambda: AdaRound's rounding-regulariser weight λ.
      sr_scale: upscaling factor of a super-resolution model; None for a classifier.
    """

    precision_rule: PrecisionRule = PrecisionRule()
    keep_bn: tuple = ()
    mrecg_topk: int | None = None
    adaround_lambda: float = 0.01
    sr_scale: int | None = None


# A model not from the zoo: first and last layers fully 8-bit, no keep-BN layers, λ = 0.01,
# MRECG k from the unit count.
GENERIC_DEFAULTS = ModelDefaults()
