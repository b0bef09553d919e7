"""The RepQ claims' tolerances: how far below its FP model a quantized model may land and still
count as having kept the FP accuracy (8-bit within 0.3 pt top-1 / 0.05 dB PSNR, lower bit widths
within 1 pt / 0.1 dB). train.py's verdict and the QAT results table both judge with these."""

KEEP_TOLERANCE = {"top1": {8: 0.3, "low": 1.0}, "psnr": {8: 0.05, "low": 0.1}}


def tolerance(metric, bits):
    """The allowed drop for ``metric`` ("top1" in pt, "psnr" in dB) at weight ``bits``."""
    return KEEP_TOLERANCE[metric][8 if bits >= 8 else "low"]


def keeps_fp(drop, allowed):
    """Whether a drop (quantized - FP) is within ``allowed``; rounded to 1e-6 first, because
    98.6 - 98.9 is -0.30000000000000426 in floats."""
    return round(drop, 6) >= -allowed
