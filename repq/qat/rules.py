"""Per-model precision rules for low-bit runs (RepQ supplementary).

A rule says which of the first/last quantized layers keep 8 bits:
``first_input``/``first_weight`` for the layer fed by the network input,
``last_input``/``last_weight`` for the layer producing the output.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class PrecisionRule:
    first_input: bool = True
    first_weight: bool = True
    last_input: bool = True
    last_weight: bool = True


RULES = {
    "repvgg": PrecisionRule(first_input=True, first_weight=False, last_input=False, last_weight=False),
    "ac_resnet18": PrecisionRule(first_input=True, first_weight=True, last_input=False, last_weight=False),
    "orepa_resnet18": PrecisionRule(),
    "ecbsr": PrecisionRule(),
}
DEFAULT_RULE = PrecisionRule()  # first and last layers fully 8-bit (the common PTQ/QAT convention)
HIGH_BITS = 8

# Layers that keep true BatchNorm under BN estimation (small feature maps bias the estimate).
BNEST_KEEP_BN = {
    "resnet18": ("stage4_block1_conv1", "stage4_block1_conv2"),
}


def rule_for(model_name):
    """The precision rule of a zoo model (matched by name prefix), else the default."""
    for prefix, rule in RULES.items():
        if model_name.startswith(prefix):
            return rule
    return DEFAULT_RULE


def keep_bn_for(model_name):
    """Names of layers that keep BatchNorm under BNEst for a zoo model."""
    for key, names in BNEST_KEEP_BN.items():
        if key in model_name:
            return names
    return ()
