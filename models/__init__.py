"""The repq model zoo: ``create_model(name, **kwargs)`` and ``list_models()``."""

from models import ecbsr, mobilenetv2, repvgg, resnet  # noqa: F401  (registers the builders)
from models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
