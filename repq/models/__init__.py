"""The repq model zoo: ``create_model(name, **kwargs)`` and ``list_models()``."""

from repq.models import ecbsr, mobilenetv2, repvgg, resnet  # noqa: F401  (registers the builders)
from repq.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
