"""RepQ quantization-aware training: QAT wrappers, precision rules and the model transform."""

from repq.qat.calibrate import calibrate
from repq.qat.quant_layers import QuantConv2D, QuantDense, QuantRepConv, QuantWrapper
from repq.qat.rules import PrecisionRule
from repq.qat.transform import quantize_model, quantized_layers

__all__ = ["PrecisionRule", "calibrate", "QuantConv2D", "QuantDense", "QuantRepConv", "QuantWrapper",
           "quantize_model", "quantized_layers"]
