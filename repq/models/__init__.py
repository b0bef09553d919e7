"""The repq model zoo: ``create_model(name, **kwargs)``, ``list_models()`` and each model's ``ModelDefaults``."""

from repq.models import ecbsr, mobilenetv2, repvgg, resnet  # noqa: F401  (registers the builders)
from repq.models.defaults import GENERIC_DEFAULTS, ModelDefaults
from repq.models.registry import (create_model, list_models, model_defaults, register_model, registry_name,
                                  set_registry_name)

__all__ = ["GENERIC_DEFAULTS", "ModelDefaults", "create_model", "list_models", "model_defaults", "register_model",
           "registry_name", "set_registry_name"]
