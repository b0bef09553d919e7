"""Plain ResNet-18 FP recipe (the PTQ path's float model): AC-ResNet-18's Table S1 column.

``imagenet``: 100 epochs, SGD 0.1 cosine, wd 1e-4; ``embedded`` (default): mnist5k.
"""

from repq.configs import ac_resnet18

MODEL = "resnet18"


def get_config(variant="embedded"):
    config = ac_resnet18.get_config(variant)
    config.model = MODEL
    return config
