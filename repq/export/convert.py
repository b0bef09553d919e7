"""Keras model -> TFLite flatbuffer bytes (integer with learned scales, or float).

Conversion goes through a SavedModel written by Keras 3 ``model.export()`` and
``tf.lite.TFLiteConverter.from_saved_model``: that path freezes the variables, so
the fake-quant ranges are constants the converter turns into int8 scales.
(``from_concrete_functions`` on a Keras 3 model keeps resource variables and
leaves the fake-quant ops unconverted.)

Integer models are converted in quantization-aware mode only: every tensor has
a fake-quant op (:mod:`repq.qat.range_placement`) and NO representative dataset is
passed to the converter, because its post-training calibration would override
the learned ranges (a prototype got bias scales inconsistent with the input
scale that way).
"""

import os
import tempfile

import tensorflow as tf


def input_signature(model, batch_size=1):
    """``[tf.TensorSpec]`` of the model inputs with a fixed batch size."""
    return [tf.TensorSpec((batch_size, *t.shape[1:]), tf.float32, name=t.name) for t in model.inputs]


def _saved_model(model, directory, signature):
    model.export(directory, format="tf_saved_model", input_signature=signature, verbose=False)


def to_tflite(model, input_shape=None, integer=True, float_io=False):
    """Convert ``model`` (single input, fixed spatial size) to TFLite bytes.

    Args:
      model: for ``integer=True`` a model whose every tensor has a fake-quant op.
      input_shape: ``(H, W, C)`` overriding unknown input dimensions (SR models).
      integer: full-integer model (int8 activations/weights, int32 bias).
      float_io: keep float32 model input/output (quantize/dequantize at the edges).
    """
    shape = (1, *(input_shape or model.inputs[0].shape[1:]))
    if any(d is None for d in shape):
        raise ValueError(f"the TFLite model needs a fixed input shape; got {shape}, pass input_shape.")
    signature = [tf.TensorSpec(shape, tf.float32, name=model.inputs[0].name)]
    with tempfile.TemporaryDirectory() as tmp:
        _saved_model(model, os.path.join(tmp, "saved_model"), signature)
        converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(tmp, "saved_model"))
        if integer:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if not float_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        return converter.convert()
