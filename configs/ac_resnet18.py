"""``--config=configs/ac_resnet18.py[:variant]`` from a checkout: the recipe is :mod:`repq.configs.ac_resnet18`."""

from repq.configs.ac_resnet18 import get_config  # noqa: F401
