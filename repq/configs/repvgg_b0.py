"""RepVGG-B0 recipe: Table S1 gives RepVGG-A0 and B0 one column, so it is A0's recipe.

Usage: ``python train.py --model repvgg_b0 --config=configs/repvgg_b0.py:imagenet``.
"""

from repq.configs import repvgg_a0

MODEL = "repvgg_b0"


def get_config(variant="embedded"):
    config = repvgg_a0.get_config(variant)
    config.model = MODEL
    return config
