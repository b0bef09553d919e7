"""``--config=configs/ecbsr_m4c16.py[:variant]`` from a checkout: the recipe is :mod:`repq.configs.ecbsr_m4c16`."""

from repq.configs.ecbsr_m4c16 import get_config  # noqa: F401
