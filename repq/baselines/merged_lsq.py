"""Merged LSQ baseline: ``quantize_model(reparametrize(fp_model))``.

The multi-branch model is merged into a plain net first, so QAT trains one conv per
block and loses the multi-branch training dynamics RepQ keeps.
"""

from repq.graph import flatten_model
from repq.models import model_defaults
from repq.qat import quantize_model
from repq.reparam import reparametrize


def merged_lsq_model(fp_model, weight_bits, act_bits, rule=None):
    """The merged-LSQ QAT model of a trained float multi-branch model.

    Same quantization scheme and precision rule as RepQ (``rule`` defaults to
    ``fp_model``'s ``repq.models.model_defaults``), applied to the merged plain net.
    """
    rule = model_defaults(fp_model).precision_rule if rule is None else rule
    plain = flatten_model(reparametrize(fp_model))
    return quantize_model(plain, weight_bits, act_bits, rule=rule)
