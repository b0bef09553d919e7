"""``--config=configs/repvgg_a0.py[:variant]`` from a checkout: the recipe is :mod:`repq.configs.repvgg_a0`."""

from repq.configs.repvgg_a0 import get_config  # noqa: F401
