"""A flat view of a functional Keras model: ops in topological order and tensor ids.

Tensor ids are ``id(KerasTensor)`` of the quantized model (:class:`repq.ptq.qmodel.QuantModel`);
the reconstruction units and the FP mirror refer to tensors by these ids.
"""

import dataclasses

import keras
from keras import tree

from repq.graph import call_nodes, is_graph_model
from repq.qat.quant_layers import QuantWrapper


@dataclasses.dataclass
class Op:
    """One call of a layer: ``output = layer(*inputs)``."""

    index: int
    layer: keras.layers.Layer
    node: object  # keras Node: its arguments map KerasTensors to values
    inputs: list  # tensor ids
    output: int  # tensor id

    @property
    def name(self):
        return self.layer.name

    @property
    def has_weights(self):
        return is_weight_layer(self.layer)

    @property
    def float_layer(self):
        """The FP layer this op computes: a QAT wrapper's wrapped layer, else the layer itself."""
        return self.layer.layer if isinstance(self.layer, QuantWrapper) else self.layer


def is_weight_layer(layer):
    """Conv2D (incl. ``PaddedConv2D`` and grouped/depthwise-as-groups), Dense, or a QAT wrapper of one."""
    return isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense, QuantWrapper))


class Graph:
    """Ops of ``model`` in execution order, with producers and consumers of every tensor.

    Raises:
      TypeError: not a functional/Sequential model, a layer called more than once, a layer
        with several outputs, or a layer holding weights that is neither Conv2D nor Dense
        (e.g. an unfolded BatchNormalization or PReLU; reparametrize the model first).
        ``may_hold_weights(layer)`` widens that check (e.g. to read a quantized model).
    """

    def __init__(self, model, may_hold_weights=is_weight_layer):
        self.may_hold_weights = may_hold_weights
        if not is_graph_model(model):
            raise TypeError(f"PTQ needs a functional or Sequential model, got {type(model).__name__}.")
        self.model = model
        self.tensors = {}
        self.ops = []
        for t in model.inputs:
            self.tensors[id(t)] = t
        for node in call_nodes(model):
            self._add(node)
        self.input_ids = [id(t) for t in model.inputs]
        self.output_ids = [id(t) for t in model.outputs]
        self.consumers = {tid: [] for tid in self.tensors}
        for op in self.ops:
            for tid in op.inputs:
                self.consumers[tid].append(op.index)
        self.producer = {op.output: op.index for op in self.ops}

    def _add(self, node):
        layer = node.operation
        if any(op.layer is layer for op in self.ops):
            raise TypeError(f"layer {layer.name!r} is called more than once; PTQ needs one call per layer.")
        if len(node.output_tensors) != 1:
            raise TypeError(f"layer {layer.name!r} has {len(node.output_tensors)} outputs; PTQ needs one.")
        if layer.weights and not self.may_hold_weights(layer):
            raise TypeError(f"cannot quantize layer {layer.name!r} of type {type(layer).__name__}: only "
                            "Conv2D/Dense may hold weights (reparametrize the model first).")
        if isinstance(layer, keras.layers.Conv2D) and tuple(layer.dilation_rate) != (1, 1):
            raise TypeError(f"cannot quantize dilated conv {layer.name!r}.")
        out = node.output_tensors[0]
        self.tensors[id(out)] = out
        self.ops.append(Op(len(self.ops), layer, node, [id(t) for t in node.input_tensors], id(out)))


def run_ops(ops, values, layer_fn):
    """Execute ``ops`` in order on ``values`` (tensor id -> tensor), in place; returns ``values``.

    ``layer_fn(op)`` gives the callable for an op (its layer, a copy, or an FP stand-in).
    """
    for op in ops:
        args, kwargs = op.node.arguments.fill_in(values)
        values[op.output] = tree.flatten(layer_fn(op)(*args, **kwargs))[0]
    return values
