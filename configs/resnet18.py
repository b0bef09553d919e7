"""``--config=configs/resnet18.py[:variant]`` from a checkout: the recipe is :mod:`repq.configs.resnet18`."""

from repq.configs.resnet18 import get_config  # noqa: F401
