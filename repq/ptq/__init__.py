"""Post-training quantization with block reconstruction: AdaRound, BRECQ, QDrop, MRECG.

Entry points: :func:`quantize_ptq`, and :func:`deployable_model` for the export; see docs/ptq.md.
"""

from repq.ptq.deployable import deployable_model
from repq.ptq.driver import METHODS, quantize_ptq

__all__ = ["METHODS", "deployable_model", "quantize_ptq"]
