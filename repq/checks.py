"""Argument checks of the public API, with errors in Keras' form.

``Invalid value for argument model. Expected a built keras.Model. Received: model=...``
instead of an ``AttributeError``/``IndexError`` from deep inside (a string, an unbuilt
Sequential), and a clear word when a model is already quantized (a QAT model).
"""

import keras


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_built_model(model, argument="model"):
    """Raise TypeError unless ``model`` is a keras.Model, ValueError unless it is built with inputs."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"Invalid value for argument {argument}. Expected a built keras.Model. "
                        f"Received: {argument}={_short(model)} (of type {type(model).__name__})")
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not model.built or not inputs:
        raise ValueError(f"Invalid value for argument {argument}. Expected a built keras.Model. "
                         f"Received: {argument}=<unbuilt {type(model).__name__} {model.name!r}> (no inputs); "
                         "start it with keras.Input(shape) or call it on data first.")


def quantized_layer_names(model):
    """Names of the QAT wrappers (repq.qat) in ``model``."""
    from repq.graph import all_layers
    from repq.qat.quant_layers import QuantWrapper

    return [layer.name for layer in all_layers(model) if isinstance(layer, QuantWrapper)]


def check_not_quantized(model, argument="model", fix="pass the floating-point model"):
    """Raise ValueError if ``model`` already holds QAT layers."""
    names = quantized_layer_names(model)
    if names:
        more = f", ... ({len(names) - 3} more)" if len(names) > 3 else ""
        raise ValueError(f"Invalid value for argument {argument}. {model.name!r} is already quantized "
                         f"(QAT layers {', '.join(names[:3])}{more}); {fix}.")


def check_finite_weights(model, argument="model"):
    """Raise ValueError if any variable of ``model`` (weights, BN statistics, quantizer steps and
    ranges) holds NaN or Inf: an export of it would compute garbage without a word."""
    import numpy as np

    bad = [v.path for v in model.variables if not np.all(np.isfinite(keras.ops.convert_to_numpy(v)))]
    if bad:
        more = f", ... ({len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ValueError(f"Invalid value for argument {argument}. {model.name!r} has NaN or Inf in {len(bad)} "
                         f"variable(s): {', '.join(bad[:3])}{more}; the training diverged: export an earlier "
                         "checkpoint or retrain (e.g. with a lower learning rate).")
