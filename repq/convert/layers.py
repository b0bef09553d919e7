"""Per-layer loaders: one official PyTorch module's state_dict -> one Keras layer.

Every loader takes ``(layer, reader)`` where ``reader`` resolves the keys of
the PyTorch module that corresponds to ``layer`` (keys without the network
prefix, exactly as ``module.state_dict()`` names them):

=====================  ==========================================================
Keras layer            PyTorch module and its keys
=====================  ==========================================================
``RepVGGBlock``        RepVGG ``RepVGGBlock``: ``rbr_dense.{conv.weight,bn.*}``,
                       ``rbr_1x1.{conv.weight,bn.*}``, ``rbr_identity.*`` (BN, only
                       with an identity branch)
``ACBlock``            ACNet ``ACBlock``: ``{square,ver,hor}_conv.weight``,
                       ``{square,ver,hor}_bn.*``
``OREPABlock``         OREPA ``OREPA``: ``weight_orepa_*``, ``vector``, ``bn.*``
``OREPALargeConv``     OREPA ``OREPA_LargeConv``: ``weight{j}.<OREPA keys, no bn>``,
                       ``bn.*``
``OREPAKernel``        one OREPA weight generator (the OREPA keys without ``bn``)
``ECBlock``            ECBSR ``ECB``: ``conv3x3.{weight,bias}``,
                       ``conv1x1_3x3.{k0,b0,k1,b1}``,
                       ``conv1x1_{sbx,sby,lpl}.{k0,b0,scale,bias,mask}``, ``act.weight``
``ConvBN``             ``Sequential(conv, bn)``: ``conv.weight``, ``bn.*``
``PaddedConv2D``       ``nn.Conv2d`` with bias: ``weight``, ``bias``
``Dense``              ``nn.Linear``: ``weight``, ``bias``
=====================  ==========================================================

``bn.*`` is ``weight, bias, running_mean, running_var`` (``num_batches_tracked``
is accepted and ignored); PyTorch's BN eps 1e-5 matches repq's norms. Layouts:
conv OIHW -> HWIO, linear (out, in) -> (in, out), 1x1 conv (out, in, 1, 1) ->
(in, out), PReLU (C,) or a shared (1,) -> alpha (1, 1, C).
"""

import keras
import numpy as np

from repq.layers import ACBlock, ConvBN, ECBlock, OREPABlock, OREPAKernel, OREPALargeConv, RepVGGBlock
from repq.layers.ecb import EDGE_MASKS
from repq.layers.orepa import DW_EXPANSION, frequency_prior

TORCH_BN_EPS = 1e-5
# ECBSR's SeqConv3x3 attribute names of the Sobel-x, Sobel-y and Laplacian branches.
ECB_EDGE_MODULES = {"sobelx": "conv1x1_sbx", "sobely": "conv1x1_sby", "laplacian": "conv1x1_lpl"}


# ------------------------------------------------------------------- layouts
def oihw_to_hwio(weight):
    return np.transpose(weight, (2, 3, 1, 0))


def pointwise_to_matrix(weight):
    """A 1x1 conv kernel ``(out, in, 1, 1)`` as an ``(in, out)`` matrix."""
    return weight[:, :, 0, 0].T


def load_kernel(reader, variable, key):
    """HWIO ``variable (kh, kw, I, O)`` <- OIHW ``key (O, I, kh, kw)``."""
    kh, kw, cin, cout = variable.shape
    reader.put(variable, key, (cout, cin, kh, kw), oihw_to_hwio)


def load_pointwise(reader, variable, key):
    """``variable (in, out)`` <- 1x1 conv ``key (out, in, 1, 1)``."""
    cin, cout = variable.shape
    reader.put(variable, key, (cout, cin, 1, 1), pointwise_to_matrix)


def load_vector(reader, variable, key):
    reader.put(variable, key, tuple(variable.shape))


def load_batch_norm(reader, norm, prefix):
    """Keras ``BatchNormalization`` <- PyTorch ``BatchNorm2d`` keys under ``prefix``."""
    channels = (norm.moving_mean.shape[0],)
    for variable, name in ((norm.gamma, "weight"), (norm.beta, "bias"),
                           (norm.moving_mean, "running_mean"), (norm.moving_variance, "running_var")):
        reader.put(variable, f"{prefix}.{name}", channels)
    reader.get(f"{prefix}.num_batches_tracked", (), optional=True)


def load_prelu(reader, prelu, key):
    """Keras ``PReLU(shared_axes=[1, 2])`` alpha ``(1, 1, C)`` <- ``nn.PReLU`` weight ``(C,)`` or ``(1,)``."""
    channels = prelu.alpha.shape[-1]
    shape = (1,) if reader.shape(key) == (1,) else (channels,)
    reader.put(prelu.alpha, key, shape, lambda a: np.broadcast_to(a, (1, 1, channels)))


# -------------------------------------------------------------------- blocks
def load_repvgg(block, reader):
    load_kernel(reader, block.kernel_3x3, "rbr_dense.conv.weight")
    load_batch_norm(reader, block.norms[0], "rbr_dense.bn")
    load_kernel(reader, block.kernel_1x1, "rbr_1x1.conv.weight")
    load_batch_norm(reader, block.norms[1], "rbr_1x1.bn")
    if block.has_identity:
        load_batch_norm(reader, block.norms[2], "rbr_identity")


def load_acb(block, reader):
    for branch, kernel, norm in zip(("square", "ver", "hor"),
                                    (block.kernel_square, block.kernel_ver, block.kernel_hor), block.norms):
        load_kernel(reader, kernel, f"{branch}_conv.weight")
        load_batch_norm(reader, norm, f"{branch}_bn")


def load_orepa_kernel(gen, reader):
    """One OREPA weight generator; see ``repq.layers.orepa`` for the Keras layouts.

    ``idconv1 (T, I)`` <- ``(T, I, 1, 1)``; ``dw (k, k, 8*in)`` <- ``(8*in, 1, k, k)``
    (channel ``8c + t`` in both); ``prior (k, k, out)`` <- buffer ``(out, k, k)``.
    The fixed buffers ``weight_orepa_avg_avg`` and ``id_tensor`` are verified.
    """
    k, cin, cout = gen.kernel_size, gen.in_channels, gen.filters
    load_kernel(reader, gen.origin, "weight_orepa_origin")
    load_pointwise(reader, gen.avg_conv, "weight_orepa_avg_conv")
    load_pointwise(reader, gen.pfir_conv, "weight_orepa_pfir_conv")
    reader.put(gen.prior, "weight_orepa_prior", (cout, k, k), lambda p: np.transpose(p, (1, 2, 0)))
    reader.warn_if_differs("weight_orepa_prior", np.transpose(frequency_prior(cout, k), (2, 0, 1)),
                           "OREPA frequency prior")
    load_pointwise(reader, gen.conv_1x1, "weight_orepa_1x1")
    reader.put(gen.idconv1, "weight_orepa_1x1_kxk_idconv1", (cin, cin, 1, 1), lambda w: w[:, :, 0, 0])
    load_kernel(reader, gen.conv2, "weight_orepa_1x1_kxk_conv2")
    reader.put(gen.dw, "weight_orepa_gconv_dw", (cin * DW_EXPANSION, 1, k, k),
               lambda w: np.transpose(w[:, 0], (1, 2, 0)))
    load_pointwise(reader, gen.pw, "weight_orepa_gconv_pw")
    load_vector(reader, gen.vector, "vector")
    reader.check("weight_orepa_avg_avg", np.full((k, k), 1.0 / (k * k), np.float32), "average kernel")
    reader.check("id_tensor", np.eye(cin, dtype=np.float32)[:, :, None, None], "identity")


def load_orepa(block, reader):
    load_orepa_kernel(block.generator, reader)
    load_batch_norm(reader, block.norms[0], "bn")


def load_orepa_large(block, reader):
    for j, gen in enumerate(block.generators):
        load_orepa_kernel(gen, reader.sub(f"weight{j}"))
    load_batch_norm(reader, block.norms[0], "bn")


def load_ecb(block, reader):
    """ECB; the fixed Sobel/Laplacian ``mask`` parameters ``(out, 1, 3, 3)`` are verified."""
    out = block.filters
    load_kernel(reader, block.k3, "conv3x3.weight")
    load_vector(reader, block.b3, "conv3x3.bias")
    load_pointwise(reader, block.seq_k0, "conv1x1_3x3.k0")
    load_vector(reader, block.seq_b0, "conv1x1_3x3.b0")
    load_kernel(reader, block.seq_k1, "conv1x1_3x3.k1")
    load_vector(reader, block.seq_b1, "conv1x1_3x3.b1")
    for kind, (k0, b0, scale, bias) in block.edges.items():
        module = ECB_EDGE_MODULES[kind]
        load_pointwise(reader, k0, f"{module}.k0")
        load_vector(reader, b0, f"{module}.b0")
        reader.put(scale, f"{module}.scale", (out, 1, 1, 1), lambda s: s.reshape(out))
        load_vector(reader, bias, f"{module}.bias")
        reader.check(f"{module}.mask", np.broadcast_to(EDGE_MASKS[kind], (out, 1, 3, 3)), f"{kind} mask")
    if block.prelu is not None:
        load_prelu(reader, block.prelu, "act.weight")


def load_conv_bn(block, reader):
    load_kernel(reader, block.kernel, "conv.weight")
    load_batch_norm(reader, block.norms[0], "bn")


def load_conv(conv, reader):
    """``PaddedConv2D`` (or any biased ``Conv2D``) <- ``weight``, ``bias``."""
    load_kernel(reader, conv.kernel, "weight")
    load_vector(reader, conv.bias, "bias")


def load_dense(dense, reader):
    cin, cout = dense.kernel.shape
    reader.put(dense.kernel, "weight", (cout, cin), np.transpose)
    load_vector(reader, dense.bias, "bias")


def load_fused_conv_bn(conv, reader):
    """Deploy conv <- a conv+BN pair, folded here (``conv.weight`` + ``bn.*``), or a
    conv already fused with bias (``conv.weight`` + ``conv.bias``, OREPA's deployed
    ``ConvBN``); which form is read depends on whether ``bn.running_var`` exists."""
    if not reader.has("bn.running_var"):
        load_conv(conv, reader.sub("conv"))
        return
    kh, kw, cin, cout = conv.kernel.shape
    weight = reader.get("conv.weight", (cout, cin, kh, kw))
    stats = [reader.get(f"bn.{name}", (cout,)) for name in ("weight", "bias", "running_mean", "running_var")]
    reader.get("bn.num_batches_tracked", (), optional=True)
    if weight is None or any(s is None for s in stats):
        return
    gamma, beta, mean, var = stats
    scale = gamma / np.sqrt(var + TORCH_BN_EPS)
    reader.set(conv.kernel, oihw_to_hwio(weight * scale[:, None, None, None]))
    reader.set(conv.bias, beta - mean * scale)


def load_conv_prelu(seq, reader):
    """A deployed ECB ``Sequential([conv, prelu])`` <- ``conv.{weight,bias}``, ``act.weight``."""
    conv, prelu = seq.layers
    load_conv(conv, reader.sub("conv"))
    load_prelu(reader, prelu, "act.weight")


# Most specific class first: every block is a Layer, PaddedConv2D is a Conv2D.
LAYER_LOADERS = (
    (RepVGGBlock, load_repvgg), (ACBlock, load_acb), (OREPABlock, load_orepa),
    (OREPALargeConv, load_orepa_large), (ECBlock, load_ecb), (ConvBN, load_conv_bn),
    (OREPAKernel, load_orepa_kernel), (keras.layers.Conv2D, load_conv), (keras.layers.Dense, load_dense),
)


def loader_for(layer):
    """The loader reading ``layer``'s own PyTorch module keys (table above)."""
    for cls, loader in LAYER_LOADERS:
        if isinstance(layer, cls):
            return loader
    raise TypeError(f"no PyTorch loader for {type(layer).__name__} layer {layer.name!r}.")
