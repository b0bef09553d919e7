"""Where each layer of a repq model lives in the official PyTorch state_dict.

Key conventions (PyTorch module attribute paths; ``{s}`` = stage 1..4,
``{i}`` = block index in the stage, Keras layer names in brackets):

RepVGG (``repvgg.py``): ``stage0`` [stage0] and ``stage{s}.{i}``
  [stage{s}_block{i}] are RepVGG blocks, ``linear`` [classifier]. Deploy checkpoints hold
  ``<block>.rbr_reparam.{weight,bias}``.
AC-ResNet-18 (ACNet ``base_model/resnet.py`` + ``ACNetBuilder``):
  ``stage0.conv1`` = Sequential(conv, bn, relu) [stem];
  ``stage{s}.{i}.conv1.acb`` (``Conv2dBNReLU`` = Sequential(acb, relu)) [_conv1];
  ``stage{s}.{i}.conv2`` = the ACBlock itself [_conv2];
  ``stage{s}.{i}.shortcut`` = Sequential(conv, bn) [_shortcut]; ``linear``.
  Deploy (``acnet_fusion``): each ACB becomes ``<acb>.fused_conv.{weight,bias}``;
  the plain conv+BN layers are kept unfused.
OREPA-ResNet-18 (OREPA ``models/resnet.py`` + ``convnet_utils.py``): same
  module paths as ACNet without the ``.acb`` level; ``stage0.conv1`` is an
  ``OREPA_LargeConv`` (``weight0..2`` generators + ``bn``), 3x3 convs are
  ``OREPA``, shortcuts ``ConvBN`` (``conv``, ``bn``). Deploy:
  ``or_large_reparam`` / ``orepa_reparam`` convs with bias, ``ConvBN`` fused
  into ``conv.{weight,bias}``.
ResNet-18 (torchvision): ``conv1``/``bn1`` [stem], ``layer{s}.{i}.conv{1,2}`` /
  ``bn{1,2}``, ``layer{s}.{i}.downsample.{0,1}`` [_shortcut], ``fc``.
MobileNetV2 (torchvision): ``features.0.{0,1}`` [stem]; ``features.{f}.conv``
  of block f (1..17) holds ``{0,1}.{0,1}`` (Conv2dNormActivation: conv, bn) for
  expand/depthwise, then the projection conv and its bn; ``features.18.{0,1}``
  [head_conv]; ``classifier.1`` (after Dropout).
ECBSR (``models/ecbsr.py``): ``backbone.{j}`` are the ECBs [ecb_head,
  ecb_body{j-1}, ecb_tail]. Deploy checkpoints are ``PlainSR``
  (``models/plainsr.py``): conv ``backbone.{2j}``, its PReLU ``backbone.{2j+1}``.

Assumptions where the method SPEC is silent (attribute names reconstructed
from the official code structure): ACNet's ``Conv2dBNReLU`` names its children
``acb``/``relu``, ACBlock's are ``{square,ver,hor}_{conv,bn}`` and ``fused_conv``;
OREPA's deploy convs are ``orepa_reparam`` / ``or_large_reparam`` and
LargeConv's generators ``weight{j}``; PlainSR interleaves conv and activation
modules in one ``backbone`` Sequential. ACNet's ``AvgPool(7)`` head equals the
Keras global pooling at 224x224 input.
"""

import dataclasses
import re
from typing import Callable

import keras

from repq.models.mobilenetv2 import INVERTED_RESIDUAL_SETTING
from repq.convert.layers import (load_conv, load_conv_bn, load_conv_prelu, load_dense, load_ecb,
                                 load_fused_conv_bn, loader_for)
from repq.convert.state import Scope
from repq.layers import ConvBN, ECBlock, PaddedConv2D, RepConvBlock

RESNET_LAYER = re.compile(r"stage(\d)_block(\d)_(conv1|conv2|shortcut)")
MOBILENET_LAYER = re.compile(r"block(\d)_(\d+)_(expand|depthwise|project)")


def conv_bn_entry(layer, scope):
    """A conv+BN layer: trainable ``ConvBN`` or its deployed conv (folded on load)."""
    return (load_fused_conv_bn if isinstance(layer, PaddedConv2D) else load_conv_bn), scope


def rep_entry(layer, prefix, deploy_name):
    """A rep block at ``prefix``; deployed, it is the conv ``prefix.deploy_name``."""
    if isinstance(layer, PaddedConv2D):
        return load_conv, Scope(f"{prefix}.{deploy_name}")
    return loader_for(layer), Scope(prefix)


def repvgg_entry(layer, model):
    if layer.name == "classifier":
        return load_dense, Scope("linear")
    match = re.fullmatch(r"stage0|stage(\d)_block(\d+)", layer.name)
    if match is None:
        return None
    prefix = "stage0" if match.group(1) is None else f"stage{match.group(1)}.{match.group(2)}"
    return rep_entry(layer, prefix, "rbr_reparam")


def stage_resnet_entry(layer, stem, conv1_suffix, deploy_name):
    """ACNet / OREPA ResNet-18: ``stage0.conv1`` stem, ``stage{s}.{i}.{conv1,conv2,shortcut}``."""
    if layer.name == "classifier":
        return load_dense, Scope("linear")
    if layer.name == "stem":
        return stem(layer)
    match = RESNET_LAYER.fullmatch(layer.name)
    if match is None:
        return None
    stage, block, part = match.groups()
    prefix = f"stage{stage}.{block}.{part}"
    if part == "shortcut":
        return conv_bn_entry(layer, Scope(prefix))
    return rep_entry(layer, prefix + (conv1_suffix if part == "conv1" else ""), deploy_name)


def acnet_entry(layer, model):
    return stage_resnet_entry(layer, lambda stem: conv_bn_entry(stem, Scope("stage0.conv1")),
                              ".acb", "fused_conv")


def orepa_entry(layer, model):
    return stage_resnet_entry(layer, lambda stem: rep_entry(stem, "stage0.conv1", "or_large_reparam"),
                              "", "orepa_reparam")


def torchvision_resnet_entry(layer, model):
    if layer.name == "classifier":
        return load_dense, Scope("fc")
    if layer.name == "stem":
        return conv_bn_entry(layer, Scope(heads={"conv": "conv1", "bn": "bn1"}))
    match = RESNET_LAYER.fullmatch(layer.name)
    if match is None:
        return None
    stage, block, part = match.groups()
    base = f"layer{stage}.{block}"
    if part == "shortcut":
        heads = {"conv": f"{base}.downsample.0", "bn": f"{base}.downsample.1"}
    else:
        heads = {"conv": f"{base}.{part}", "bn": f"{base}.bn{part[-1]}"}
    return conv_bn_entry(layer, Scope(heads=heads))


def torchvision_mobilenetv2_entry(layer, model):
    last = 1 + sum(n for _, _, n, _ in INVERTED_RESIDUAL_SETTING)
    if layer.name == "classifier":
        return load_dense, Scope("classifier.1")
    if layer.name in ("stem", "head_conv"):
        index = 0 if layer.name == "stem" else last
        return conv_bn_entry(layer, Scope(heads={"conv": f"features.{index}.0", "bn": f"features.{index}.1"}))
    match = MOBILENET_LAYER.fullmatch(layer.name)
    if match is None:
        return None
    stage, block, part = int(match.group(1)), int(match.group(2)), match.group(3)
    base = f"features.{1 + sum(n for _, _, n, _ in INVERTED_RESIDUAL_SETTING[:stage]) + block}.conv"
    activated = ("depthwise",) if INVERTED_RESIDUAL_SETTING[stage][0] == 1 else ("expand", "depthwise")
    if part == "project":  # a bare conv and BN follow the Conv2dNormActivation modules
        heads = {"conv": f"{base}.{len(activated)}", "bn": f"{base}.{len(activated) + 1}"}
    else:
        index = activated.index(part)
        heads = {"conv": f"{base}.{index}.0", "bn": f"{base}.{index}.1"}
    return conv_bn_entry(layer, Scope(heads=heads))


def ecbsr_entry(layer, model):
    """``backbone.{j}`` ECBs; deployed, PlainSR's conv ``backbone.{2j}`` and act ``backbone.{2j+1}``."""
    if model.input_shape[-1] != 1:
        raise ValueError("ECBSR conversion needs colors=1: PixelShuffle and depth_to_space order "
                         "channels differently for more colours.")
    bodies = sum(1 for other in model.layers if re.fullmatch(r"ecb_body\d+", other.name))
    body = re.fullmatch(r"ecb_body(\d+)", layer.name)
    if layer.name == "ecb_head":
        j = 0
    elif layer.name == "ecb_tail":
        j = bodies + 1
    elif body is not None:
        j = int(body.group(1)) + 1
    else:
        return None
    if isinstance(layer, ECBlock):
        return load_ecb, Scope(f"backbone.{j}")
    if isinstance(layer, keras.Sequential):
        return load_conv_prelu, Scope(heads={"conv": f"backbone.{2 * j}", "act": f"backbone.{2 * j + 1}"})
    return load_conv, Scope(f"backbone.{2 * j}")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """An official PyTorch layout.

    ``entry(layer, model)`` gives a weighted Keras layer's ``(loader, scope)``
    (None if it has no counterpart); ``train_keys`` / ``deploy_keys`` are
    regexes of keys found only in train-time / deploy checkpoints (None for
    layouts without a deploy form).
    """
    name: str
    entry: Callable
    train_keys: str | None = None
    deploy_keys: str | None = None
    input_channels: int = 3


# Keyed by model-name prefix, most specific first.
ARCHITECTURES = {
    "repvgg": Architecture("RepVGG", repvgg_entry, r"\.rbr_dense\.", r"\.rbr_reparam\."),
    "ac_resnet": Architecture("ACNet", acnet_entry, r"\.square_conv\.", r"\.fused_conv\."),
    "orepa_resnet": Architecture("OREPA", orepa_entry, r"\.weight_orepa_origin$",
                                 r"\.(orepa_reparam|or_large_reparam)\."),
    "resnet": Architecture("torchvision ResNet", torchvision_resnet_entry),
    "mobilenetv2": Architecture("torchvision MobileNetV2", torchvision_mobilenetv2_entry),
    "ecbsr": Architecture("ECBSR", ecbsr_entry, r"\.conv3x3\.", r"^backbone\.\d+\.weight$", 1),
}


def architecture_of(model_name):
    """The :class:`Architecture` of a repq model name (``repvgg_a0``, ``ecbsr_m4c16_x2``...)."""
    for prefix, architecture in ARCHITECTURES.items():
        if model_name.startswith(prefix):
            return architecture
    raise ValueError(f"no official PyTorch layout for model {model_name!r}; model names must start with "
                     f"one of: {', '.join(ARCHITECTURES)}.")


def checkpoint_form(architecture, keys):
    """"train", "deploy" or None (no marker keys, or both) for a state_dict's keys."""
    def found(pattern):
        return pattern is not None and any(re.search(pattern, key) for key in keys)
    train, deploy = found(architecture.train_keys), found(architecture.deploy_keys)
    return "train" if train and not deploy else "deploy" if deploy and not train else None


def is_multi_branch(model):
    """Whether ``model`` still has rep blocks (other than plain ``ConvBN``)."""
    return any(isinstance(layer, RepConvBlock) and not isinstance(layer, ConvBN) for layer in model.layers)


def network_plan(model, keys, architecture=None):
    """``[(layer, loader, scope)]`` for every weighted layer of ``model``.

    Raises:
      ValueError: for a deploy checkpoint and a multi-branch model (or the
        reverse), or a layer without a PyTorch counterpart.
    """
    arch = architecture_of(architecture or model.name)
    form = checkpoint_form(arch, keys)
    if form == "deploy" and is_multi_branch(model):
        raise ValueError(f"this is a deploy (re-parametrized) {arch.name} checkpoint but {model.name!r} is "
                         "multi-branch: load it into repq.reparametrize(model) instead "
                         "(from_torch_checkpoint does this automatically).")
    if form == "train" and not is_multi_branch(model):
        raise ValueError(f"this is a train-time {arch.name} checkpoint but {model.name!r} is re-parametrized: "
                         "load it into the multi-branch model, then call repq.reparametrize.")
    plan = []
    for layer in model.layers:
        if not layer.weights:
            continue
        entry = arch.entry(layer, model)
        if entry is None:
            raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no counterpart in the "
                             f"official {arch.name} layout.")
        plan.append((layer, *entry))
    return plan
