"""Registry of user layer classes that ``quantize_model`` can quantize (:func:`register_quantizable`).

Rep blocks, ``Conv2D`` and ``Dense`` have their own wrappers (:mod:`repq.qat.quant_layers`);
a registered class is wrapped in :class:`~repq.qat.quant_layers.QuantCustom`, which
fake-quantizes the kernel the class's ``kernel_and_bias`` returns and hands it to its ``apply``.
"""

import dataclasses
from collections.abc import Callable

import keras

from repq.layers.base import RepConvBlock

BUILTIN = (RepConvBlock, keras.layers.Conv2D, keras.layers.Dense)


@dataclasses.dataclass(frozen=True)
class QuantizableSpec:
    """How to quantize one layer class.

    Attributes:
      kernel_and_bias: ``layer -> (kernel, bias)``: the layer's kernel variable, output channels on
        its last axis (HWIO, (in, out)), and its bias variable of shape (out,) or None.
      apply: ``(layer, x, kernel, bias) -> y``: the layer's computation on input ``x`` with the
        given kernel and bias (bias always a tensor, zeros for a layer without one).
    """

    kernel_and_bias: Callable
    apply: Callable


_SPECS = {}


def register_quantizable(layer_cls, kernel_and_bias, apply):
    """Let :func:`repq.quantize_model` quantize layers of ``layer_cls`` (and its subclasses).

    Their kernel gets per-output-channel LSQ weight quantization and their input per-tensor LSQ
    activation quantization, as a ``Conv2D``'s does; ``repq.reparametrize`` deploys them with the
    learned steps. ``layer_cls`` must be Keras-serializable for the model to be saved, and be
    registered again (at import) before such a model is loaded. See :class:`QuantizableSpec`
    for the two callables. Returns ``layer_cls``.
    """
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, keras.layers.Layer)):
        raise TypeError(f"Invalid value for argument layer_cls. Expected a subclass of keras.layers.Layer. "
                        f"Received: layer_cls={layer_cls!r}")
    if layer_cls in BUILTIN:
        raise ValueError(f"Invalid value for argument layer_cls. {layer_cls.__name__} is quantized by repq "
                         "already; register a subclass of it to change how.")
    for name, fn in (("kernel_and_bias", kernel_and_bias), ("apply", apply)):
        if not callable(fn):
            raise TypeError(f"Invalid value for argument {name}. Expected a callable. Received: {name}={fn!r}")
    _SPECS[layer_cls] = QuantizableSpec(kernel_and_bias, apply)
    return layer_cls


def spec_for(layer):
    """The :class:`QuantizableSpec` of ``layer``'s class (the nearest registered base), or None."""
    for cls in type(layer).__mro__:
        if cls in _SPECS:
            return _SPECS[cls]
    return None


def is_quantizable(layer):
    """Whether ``quantize_model`` has a wrapper for ``layer`` (built in or registered)."""
    return isinstance(layer, BUILTIN) or spec_for(layer) is not None
