"""Post-training quantization with block reconstruction: AdaRound, BRECQ, QDrop, MRECG.

Entry point: :func:`quantize_ptq`; its model is a QAT-format model that the exports take as it is.
See docs/ptq.md.
"""

from repq.ptq.driver import METHODS, quantize_ptq

__all__ = ["METHODS", "quantize_ptq"]
