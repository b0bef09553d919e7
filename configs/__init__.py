"""The training recipes from a checkout: ``--config=configs/<model>.py[:variant]`` and
``import configs.<model>`` keep working; the recipes are :mod:`repq.configs` (installed under
that name), and each ``configs/<model>.py`` here loads its ``get_config`` from there."""
