"""repq: quantization of structurally re-parametrized networks in Keras 3."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from repq import layers  # noqa: E402
from repq.reparam import reparametrize  # noqa: E402

__all__ = ["layers", "reparametrize"]
__version__ = "0.1.0"
from repq.export import ExportError, export_savedmodel, export_tflite  # noqa: E402

__all__ += ["ExportError", "export_savedmodel", "export_tflite"]
