"""RepQ quantization-aware training: QAT wrappers, precision rules, per-layer configs and the model
transform."""

from repq.qat.calibrate import calibrate
from repq.qat.config import LayerBits, QuantizeConfig, quantize_annotate_layer
from repq.qat.quant_layers import QuantConv2D, QuantCustom, QuantDense, QuantRepConv, QuantWrapper
from repq.qat.quantizable import register_quantizable
from repq.qat.rules import PrecisionRule
from repq.qat.transform import quantize_model, quantized_layers

__all__ = ["LayerBits", "PrecisionRule", "QuantizeConfig", "calibrate", "QuantConv2D", "QuantCustom", "QuantDense",
           "QuantRepConv", "QuantWrapper", "quantize_annotate_layer", "quantize_model", "quantized_layers",
           "register_quantizable"]
