"""repq: quantization of structurally re-parametrized networks in Keras 3."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from repq import cli_env as _cli_env  # noqa: E402

# TensorFlow's absl start-up lines ignore TF_CPP_MIN_LOG_LEVEL; apply it to them (repq.cli_env)
_cli_env.import_tensorflow()

# Importing these registers every serializable class (layers, quantizers, QAT wrappers,
# optimizers, schedules, metrics), so ``keras.models.load_model`` works after ``import repq``.
from repq import layers, metrics, ptq, qat, quantizers  # noqa: E402,F401
from repq.export import ExportError, export_savedmodel, export_tflite, integer_predict  # noqa: E402
from repq.qat import (LayerBits, QuantizeConfig, calibrate, quantize_annotate_layer, quantize_model,  # noqa: E402
                      register_quantizable)
from repq.reparam import reparametrize  # noqa: E402
from repq.training import optimizers as _optimizers, schedules as _schedules  # noqa: E402,F401

__all__ = ["ExportError", "LayerBits", "QuantizeConfig", "calibrate", "export_savedmodel", "export_tflite",
           "integer_predict", "layers", "ptq", "quantize_annotate_layer", "quantize_model", "register_quantizable",
           "reparametrize"]
__version__ = "0.1.0"
