"""The one walk over functional Keras graphs, and the rebuilds on it.

:func:`call_nodes` visits a model's layer calls in topological order; QAT's range placement, PTQ's
graph, the tfmot twin and the rebuilds below all walk models with it (Keras 3 has no public node
API: this is the one place that reads ``_nodes_by_depth``; :func:`all_layers` is the one recursive layer
walk, on ``_flatten_layers``, for which Keras has no public counterpart either). The rebuilds (:func:`rebuild`,
:func:`flatten_model`, :func:`fuse_pairs`) return a new functional model whose layers are
independent copies (weights included); the input model is left as it is.
"""

import keras


def copy_layer(layer, name=None):
    """An independent copy of ``layer``, with its weights when built (and its quantize annotation),
    optionally renamed."""
    from repq.qat.config import copy_annotation  # repq.qat imports this module

    config = layer.get_config()
    config["name"] = name or config["name"]
    clone = layer.__class__.from_config(config)
    build_config = layer.get_build_config() if layer.built else None
    if build_config:
        clone.build_from_config(build_config)
        clone.set_weights(layer.get_weights())
    copy_annotation(layer, clone)
    return clone


def _replace(structure, mapping):
    return keras.tree.map_structure(
        lambda t: mapping[id(t)] if isinstance(t, keras.KerasTensor) else t, structure)


def call_nodes(model):
    """The model's layer-call nodes (not its inputs) in topological order (inputs before readers).

    Each node has ``operation`` (the layer), ``arguments`` (its call's args/kwargs), ``input_tensors``,
    ``output_tensors`` and ``parent_nodes``.
    """
    functional = getattr(model, "_functional", None) or model  # a built Sequential runs a functional twin
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            if not isinstance(node.operation, keras.layers.InputLayer):
                yield node


def is_graph_model(model):
    """Whether ``model`` is a functional or built Sequential model (a graph of layer calls)."""
    return isinstance(model, keras.Model) and hasattr(getattr(model, "_functional", None) or model, "_nodes_by_depth")


def all_layers(layer):
    """Every layer inside ``layer`` (nested models and a wrapper's wrapped layer included), not itself."""
    return list(layer._flatten_layers(include_self=False, recursive=True))


def rebuild(model, call=None):
    """A functional copy of ``model``; ``call(layer, args, kwargs)`` gives each layer's outputs on the
    copied input tensors (default: a copy of the layer, called on them)."""
    call = call or (lambda layer, args, kwargs: copy_layer(layer)(*args, **kwargs))
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in model.inputs]
    mapping = {id(old): new for old, new in zip(model.inputs, inputs)}
    for node in call_nodes(model):
        out = call(node.operation, _replace(node.arguments.args, mapping), _replace(node.arguments.kwargs, mapping))
        for old, new in zip(node.output_tensors, keras.tree.flatten(out)):
            mapping[id(old)] = new
    outputs = [mapping[id(t)] for t in model.outputs]
    return functional_model(inputs, outputs, model.name)


def functional_model(inputs, outputs, name):
    """``keras.Model`` on lists of tensors, a single input or output passed bare (so the model is
    called on a tensor, not a one-element list)."""
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
                       name=name)


def flatten_model(model):
    """A functional copy of ``model`` with nested ``Sequential`` layers inlined.

    ``repq.reparametrize`` deploys a PReLU block as ``Sequential([conv, PReLU])``;
    inlining exposes the conv to :func:`repq.qat.quantize_model`. A nested layer is
    renamed ``<sequential>_<layer>`` unless its name already starts with the Sequential's.
    """
    def call(layer, args, kwargs):
        if not isinstance(layer, keras.Sequential):
            return copy_layer(layer)(*args, **kwargs)
        out = args[0]
        for inner in layer.layers:
            name = inner.name if inner.name.startswith(layer.name) else f"{layer.name}_{inner.name}"
            out = copy_layer(inner, name)(out)
        return out

    return rebuild(model, call)


def fuse_pairs(model, fuse):
    """A copy of ``model`` in which chosen producer -> consumer pairs of layers become one layer.

    ``fuse(producer, consumer)`` is asked for each pair where ``consumer`` has the single input
    ``producer``'s output and is its only reader (and that output is not a model output); it returns
    the layer that replaces both (called on the producer's inputs), or None to keep them. A layer
    takes part in one fused pair at most per call. ``model`` itself is returned when no pair fuses.
    """
    nodes = list(call_nodes(model))
    readers = {}
    for node in nodes:
        for parent in node.parent_nodes:
            readers.setdefault(id(parent.operation), []).append(node)
    calls = {}
    for node in nodes:
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
    outputs = {id(t) for t in model.outputs}
    fused, producers = {}, {}  # consumer id -> fused layer; producer id -> consumer id
    for node in nodes:
        if len(node.parent_nodes) != 1:
            continue
        producer, consumer = node.parent_nodes[0].operation, node.operation
        if (isinstance(producer, keras.layers.InputLayer) or id(producer) in producers or id(producer) in fused
                or id(consumer) in producers or calls[id(producer)] != 1 or calls[id(consumer)] != 1
                or len(readers.get(id(producer), ())) != 1
                or any(id(t) in outputs for t in node.parent_nodes[0].output_tensors)):
            continue
        layer = fuse(producer, consumer)
        if layer is not None:
            fused[id(consumer)], producers[id(producer)] = layer, id(consumer)
    if not fused:
        return model
    producer_args = {}

    def call(layer, args, kwargs):
        if id(layer) in producers:  # called on these inputs by the fused layer, at its consumer
            producer_args[producers[id(layer)]] = (args, kwargs)
            return args[0]  # a placeholder output: its only reader, the consumer, ignores it
        if id(layer) in fused:
            inner_args, inner_kwargs = producer_args.pop(id(layer))
            return fused[id(layer)](*inner_args, **inner_kwargs)
        return copy_layer(layer)(*args, **kwargs)

    return rebuild(model, call)


def co_readers(layer):
    """Layers that read the same tensors as ``layer`` (through every graph it is part of), itself included."""
    for node in layer._inbound_nodes:
        for parent in node.parent_nodes:
            for out in parent.operation._outbound_nodes:
                yield out.operation


def output_layer(model):
    """The layer that computes ``model``'s (first) output."""
    output = keras.tree.flatten(model.outputs)[0]
    return next(node.operation for node in call_nodes(model) if any(t is output for t in node.output_tensors))


def single_producer(layer):
    """The layer whose output is ``layer``'s single input (None for a model input or a merge)."""
    parents = layer._inbound_nodes[0].parent_nodes
    return parents[0].operation if len(parents) == 1 else None
