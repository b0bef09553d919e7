"""Precision rules for low-bit runs (RepQ supplementary); each zoo model's is in its registry entry.

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


HIGH_BITS = 8
