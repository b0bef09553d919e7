"""``--config=configs/repvgg_b0.py[:variant]`` from a checkout: the recipe is :mod:`repq.configs.repvgg_b0`."""

from repq.configs.repvgg_b0 import get_config  # noqa: F401
