"""``--config=configs/mobilenetv2.py[:variant]`` from a checkout: the recipe is :mod:`repq.configs.mobilenetv2`."""

from repq.configs.mobilenetv2 import get_config  # noqa: F401
