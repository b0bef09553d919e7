"""A timm-style model registry: ``@register_model`` builders and ``create_model(name, **kw)``."""

_MODELS = {}


def register_model(fn):
    """Register a builder ``fn(**kwargs) -> keras.Model`` under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models():
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def create_model(name, **kwargs):
    """Build a registered model, e.g. ``create_model("repvgg_a0", num_classes=10, input_shape=(32, 32, 3))``.

    Raises:
      ValueError: for an unknown name (the message lists the known ones).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}.")
    return _MODELS[name](**kwargs)


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
