"""``--config=configs/orepa_resnet18.py[:variant]`` from a checkout: the recipe is :mod:`repq.configs.orepa_resnet18`."""

from repq.configs.orepa_resnet18 import get_config  # noqa: F401
