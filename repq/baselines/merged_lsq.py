"""Merged LSQ baseline: ``quantize_model(reparametrize(fp_model))``.

The multi-branch model is merged into a plain net first, so QAT trains one conv per
block and loses the multi-branch training dynamics RepQ keeps.
"""

import keras

from repq.models import model_defaults
from repq.qat import quantize_model
from repq.qat.config import copy_annotation
from repq.reparam import reparametrize


def _replace(structure, mapping):
    return keras.tree.map_structure(
        lambda t: mapping[id(t)] if isinstance(t, keras.KerasTensor) else t, structure)


def _copy(layer, name=None):
    """An independent copy of a built ``layer`` with its weights, optionally renamed."""
    config = layer.get_config()
    config["name"] = name or config["name"]
    clone = layer.__class__.from_config(config)
    clone.build_from_config(layer.get_build_config())
    clone.set_weights(layer.get_weights())
    copy_annotation(layer, clone)
    return clone


def flatten_model(model):
    """A functional copy of ``model`` with nested ``Sequential`` layers inlined.

    ``repq.reparametrize`` deploys a PReLU block as ``Sequential([conv, PReLU])``;
    inlining exposes the conv to :func:`repq.qat.quantize_model`. Layers are copied
    with their weights (a nested layer is renamed ``<sequential>_<layer>``); the result shares no state with ``model``.
    """
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in model.inputs]
    mapping = {id(old): new for old, new in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.operation
            if isinstance(layer, keras.layers.InputLayer):
                continue
            args = _replace(node.arguments.args, mapping)
            kwargs = _replace(node.arguments.kwargs, mapping)
            if isinstance(layer, keras.Sequential):
                out = args[0]
                for inner in layer.layers:
                    name = inner.name if inner.name.startswith(layer.name) else f"{layer.name}_{inner.name}"
                    out = _copy(inner, name)(out)
            else:
                out = _copy(layer)(*args, **kwargs)
            for old, new in zip(node.output_tensors, keras.tree.flatten(out)):
                mapping[id(old)] = new
    outputs = [mapping[id(t)] for t in model.outputs]
    return keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name=model.name)


def merged_lsq_model(fp_model, weight_bits, act_bits, rule=None):
    """The merged-LSQ QAT model of a trained float multi-branch model.

    Same quantization scheme and precision rule as RepQ (``rule`` defaults to
    ``fp_model``'s ``repq.models.model_defaults``), applied to the merged plain net.
    """
    rule = model_defaults(fp_model).precision_rule if rule is None else rule
    plain = flatten_model(reparametrize(fp_model))
    return quantize_model(plain, weight_bits, act_bits, rule=rule)
