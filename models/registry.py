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


def is_small_input(input_shape, stem):
    """Whether to use the small-image (CIFAR-style) stride pattern.

    ``stem="auto"`` picks it for inputs below 64 pixels; "imagenet"/"small" force one.
    """
    if stem not in ("auto", "imagenet", "small"):
        raise ValueError(f"stem must be 'auto', 'imagenet' or 'small', got {stem!r}.")
    if stem != "auto":
        return stem == "small"
    size = input_shape[0]
    return size is not None and size < 64
