"""``import models`` from a checkout: the zoo is :mod:`repq.models` (installed under that name).

``models`` and ``models.<module>`` are the very module objects of ``repq.models``, not copies,
so the zoo's layers and builders are registered once whichever name imports them.
"""

import importlib
import pkgutil
import sys

from repq import models as _zoo

for _module in pkgutil.iter_modules(_zoo.__path__):
    sys.modules[f"{__name__}.{_module.name}"] = importlib.import_module(f"{_zoo.__name__}.{_module.name}")
sys.modules[__name__] = _zoo
