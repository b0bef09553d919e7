"""Integer export of QAT models: SavedModel, full-integer TFLite, fidelity reports."""

from repq.export.api import (export_all, export_graph, export_savedmodel, export_tflite, float_tflite, integer_predict,
                             integer_tflite)
from repq.export.errors import ExportError

__all__ = ["ExportError", "export_all", "export_graph", "export_savedmodel", "export_tflite", "float_tflite",
           "integer_predict", "integer_tflite"]
