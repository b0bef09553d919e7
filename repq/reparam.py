"""``reparametrize``: turn a trained multi-branch model into its plain deploy model."""

import keras

from repq.graph import copy_layer
from repq.layers.base import RepConvBlock


def _deploy_clone(layer):
    if isinstance(layer, RepConvBlock) or hasattr(layer, "deploy_layer"):
        return layer.deploy_layer()
    return copy_layer(layer)


def reparametrize(model):
    """Return a copy of ``model`` with every rep block replaced by one convolution.

    Rep blocks become :class:`PaddedConv2D`; QAT wrappers (``repq.quantize_model``)
    become quantized convs/denses with their learned steps (``repq.qat.deploy``).

    Works on functional and sequential models, including models nested inside
    them; non-rep layers are copied with their weights, so the result shares no
    state with ``model``. In inference mode the result computes the same
    outputs as ``model`` (up to float rounding). A zoo model's registry name
    (``repq.models.registry_name``) carries over.

    Raises:
      TypeError: for subclassed models, whose graph cannot be rebuilt; wrap the
        blocks in a functional model instead.
    """
    from repq.checks import check_built_model
    from repq.models.registry import registry_name, set_registry_name

    if isinstance(model, keras.Sequential) or not isinstance(model, keras.Model):
        check_built_model(model)  # a non-model, an unbuilt Sequential (subclassed models: below)
    try:
        deployed = keras.models.clone_model(model, clone_function=_deploy_clone, recursive=True)
    except ValueError as err:
        if "Functional" in str(err) or "Sequential" in str(err):
            raise TypeError(f"reparametrize needs a functional or Sequential model, got the subclassed "
                            f"{type(model).__name__}; build it with the functional API.") from err
        raise
    name = registry_name(model)
    return deployed if name is None else set_registry_name(deployed, name)
