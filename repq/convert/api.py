"""``load_torch_state_dict`` and ``from_torch_checkpoint``."""

import keras

from repq.models import create_model
from repq.convert.files import read_state_dict
from repq.convert.layers import loader_for
from repq.convert.networks import architecture_of, checkpoint_form, network_plan
from repq.convert.state import Scope, StateDictReader
from repq.reparam import reparametrize


def load_torch_state_dict(model_or_layer, state_dict, strict=True, architecture=None):
    """Load an official PyTorch state_dict (numpy arrays, PyTorch layout) in place.

    Args:
      model_or_layer: a repq model from ``models.create_model`` (multi-branch) or
        ``repq.reparametrize`` (deploy), or one built layer (a rep block,
        ``ConvBN``, ``PaddedConv2D``, ``Dense``) given its own module's keys
        (no prefix; see ``repq.convert.layers``).
      state_dict: ``{key: array}``. A network's train-time / deploy form is
        detected from the keys; a deploy checkpoint needs the deploy model.
      strict: if False, unknown and missing keys are ignored.
      architecture: layout name (``"repvgg"``, ``"ac_resnet"``, ``"orepa_resnet"``,
        ``"resnet"``, ``"mobilenetv2"``, ``"ecbsr"``); default from the model name.
    Returns:
      ``model_or_layer``.
    Raises:
      ValueError: listing every unknown, missing and mis-shaped key (expected
        vs. got PyTorch shapes) and fixed buffers with wrong values; nothing
        is assigned then. Also for a train/deploy form mismatch.
    """
    if isinstance(model_or_layer, keras.Model):
        plan = network_plan(model_or_layer, state_dict.keys(), architecture)
    else:
        if not model_or_layer.built:
            raise ValueError(f"build layer {model_or_layer.name!r} before loading weights into it.")
        plan = [(model_or_layer, loader_for(model_or_layer), Scope())]
    reader = StateDictReader(state_dict)
    for layer, loader, scope in plan:
        loader(layer, reader.scoped(scope))
    try:
        reader.commit(repr(model_or_layer.name), strict)
    except ValueError as err:
        raise ValueError(f"{err}{layout_hint(model_or_layer)}") from None
    return model_or_layer


def layout_hint(model):
    """Why a zoo classifier built for small inputs does not take an official (ImageNet) checkpoint."""
    if not isinstance(model, keras.Model) or not model.inputs or model.name.startswith("ecbsr"):
        return ""
    size = model.inputs[0].shape[1]
    if size is None or size >= 64:
        return ""
    return (f" The model was built for {size}x{size} inputs, which use the small-image stride layout "
            "(stride-1 stem/first stage: other blocks have identity branches or downsampling); official "
            "checkpoints have the ImageNet layout: build it with inputs of 64 px or more (--input_size 224).")


def from_torch_checkpoint(model_name, path, deploy=False, strict=True, **model_kwargs):
    """``models.create_model(model_name, **model_kwargs)`` with an official checkpoint's weights.

    Args:
      path: ``.pth``/``.pt`` (torch), ``.npz`` or ``.safetensors`` file.
      deploy: return the re-parametrized model. A deploy checkpoint always
        gives the deploy model (its branches are gone).
    """
    state_dict = read_state_dict(path)
    model = create_model(model_name, **model_kwargs)
    from_deploy = checkpoint_form(architecture_of(model.name), state_dict.keys()) == "deploy"
    if from_deploy:
        model = reparametrize(model)
    load_torch_state_dict(model, state_dict, strict)
    return reparametrize(model) if deploy and not from_deploy else model
