"""A timm-style model registry: ``@register_model`` builders, each with its :class:`ModelDefaults`,
and ``create_model(name, **kw)``.

A model built by :func:`create_model` records its registry name (:func:`registry_name`), so
:func:`model_defaults` finds its settings whatever the model is named. The record is a Python
attribute: a model loaded from ``.keras`` (or cloned) has none and gets the generic defaults until
:func:`set_registry_name` tags it again (train.py and ptq.py do, from ``--model``).
"""

import dataclasses
import warnings
from collections.abc import Callable

from repq.graph import all_layers
from repq.layers.base import RepConvBlock
from repq.models.defaults import GENERIC_DEFAULTS, ModelDefaults

ATTRIBUTE = "repq_registry_name"


@dataclasses.dataclass(frozen=True)
class Entry:
    builder: Callable
    defaults: ModelDefaults


_MODELS = {}


def register_model(fn=None, *, defaults=GENERIC_DEFAULTS):
    """Register a builder ``fn(**kwargs) -> keras.Model`` under its function name.

    Use as ``@register_model`` or ``@register_model(defaults=ModelDefaults(...))``.

    Raises:
      ValueError: when a model of that name is already registered.
    """
    if not isinstance(defaults, ModelDefaults):
        raise TypeError(f"Invalid value for argument defaults. Expected a ModelDefaults. "
                        f"Received: defaults={defaults!r}")

    def register(builder):
        name = builder.__name__
        if name in _MODELS:
            known = _MODELS[name].builder
            raise ValueError(f"a model named {name!r} is already registered (by {known.__module__}."
                             f"{known.__qualname__}); register the builder under another name.")
        _MODELS[name] = Entry(builder, defaults)
        return builder

    return register if fn is None else register(fn)


def list_models():
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def _entry(name):
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}.")
    return _MODELS[name]


def create_model(name, *, bnest_padding_aware=False, **kwargs):
    """Build a registered model, e.g. ``create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3))``.

    The model records ``name`` (:func:`registry_name`). ``bnest_padding_aware=True`` (with
    ``norm_mode="bnest"``) makes every BNEst block estimate with its zero padding counted
    (:class:`repq.layers.base.RepConvBlock`).

    Raises:
      ValueError: for an unknown name (the message lists the known ones), or ``bnest_padding_aware``
        on a model without BNEst blocks.
    """
    model = _entry(name).builder(**kwargs)
    if bnest_padding_aware:
        blocks = bnest_blocks(model)
        if not blocks:
            raise ValueError(f"bnest_padding_aware=True: this {name} has no BNEst block; pass norm_mode='bnest'.")
        for block in blocks:
            block.bnest_padding_aware = True
    set_registry_name(model, name)
    return model


def bnest_blocks(model):
    """The rep blocks of ``model`` that normalize by BN estimation (``norm_mode="bnest"``), in graph order."""
    return [layer for layer in all_layers(model) if isinstance(layer, RepConvBlock) and layer.norm_mode == "bnest"]


def set_registry_name(model, name):
    """Record that ``model`` is the zoo's ``name`` (e.g. after loading it from ``.keras``); returns it."""
    _entry(name)
    setattr(model, ATTRIBUTE, name)
    return model


def registry_name(model):
    """The registry name recorded on ``model`` by :func:`create_model`, or None."""
    return getattr(model, ATTRIBUTE, None)


def model_defaults(model):
    """The :class:`ModelDefaults` of a model (or of a registry name).

    A model is looked up by its recorded :func:`registry_name`, never by ``model.name``; without
    a record it gets :data:`GENERIC_DEFAULTS` (with a warning when ``model.name`` is a registry name,
    as for a zoo model loaded from ``.keras``).
    """
    if isinstance(model, str):
        return _entry(model).defaults
    name = registry_name(model)
    if name is not None:
        return _entry(name).defaults
    if model.name in _MODELS:
        warnings.warn(f"model {model.name!r} has the name of a zoo model but no registry record (a model loaded "
                      f"from .keras has none), so it gets the generic defaults; if it is the zoo's, call "
                      f"repq.models.set_registry_name(model, {model.name!r}) first.", UserWarning, stacklevel=3)
    return GENERIC_DEFAULTS


LAYOUTS = ("imagenet", "small", "half")


def stride_layout(input_shape, stem="auto"):
    """The stride pattern of a zoo classifier: ``"imagenet"``, ``"small"`` or ``"half"``.

    * ``"imagenet"``: the paper layout, total stride 32 (a stride-2 stem and, for ResNets, a max pool);
    * ``"small"`` (CIFAR-style): the stem and the first stage keep full resolution, total stride 8;
    * ``"half"``: the small-image layout behind a stride-2 stem, total stride 16 (32 px ends at 2x2):
      4x fewer FLOPs than ``"small"``, but not the 1x1 maps of ``"imagenet"`` at 32 px.

    ``stem="auto"`` picks ``"small"`` for inputs below 64 pixels and ``"imagenet"`` otherwise.
    """
    if stem not in ("auto",) + LAYOUTS:
        raise ValueError(f"Invalid value for argument stem. Expected one of {('auto',) + LAYOUTS}. "
                         f"Received: stem={stem!r}")
    if stem != "auto":
        return stem
    size = input_shape[0]
    return "small" if size is not None and size < 64 else "imagenet"
