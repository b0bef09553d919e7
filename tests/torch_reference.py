"""PyTorch re-implementations of the official models, written from SPEC Part A.

The official repositories cannot be installed here, so these modules reproduce
their forward passes and *state_dict key names* (attribute paths) for the
conversion tests: RepVGG (``repvgg.py``), ACNet (``acb.py`` + ResNet-18 via
``ACNetBuilder``), OREPA (``blocks.py`` + ``models/resnet.py``), ECBSR
(``ecb.py``, ``ecbsr.py``, ``plainsr.py``) and torchvision's resnet18 /
mobilenet_v2. ``switch_to_deploy`` reproduces each repo's deploy checkpoint.
Global pooling is adaptive everywhere (ACNet's AvgPool(7) is the same at 224).
"""

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin, cout, k, stride=1, padding=0, groups=1):
    """RepVGG's / ACNet's ``Sequential(conv, bn)``."""
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False),
                                     bn=nn.BatchNorm2d(cout)))


def fuse_bn(kernel, bn):
    """(kernel * gamma/std, beta - mean * gamma/std)."""
    t = bn.weight / (bn.running_var + bn.eps).sqrt()
    return kernel * t.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * t


def conv_with(kernel, bias, stride=1):
    """A biased Conv2d (padding k//2) holding ``kernel``/``bias``."""
    cout, cin, kh, kw = kernel.shape
    conv = nn.Conv2d(cin, cout, (kh, kw), stride, (kh // 2, kw // 2), bias=True)
    conv.weight.data, conv.bias.data = kernel.detach().clone(), bias.detach().clone()
    return conv


def become(module, name, conv):
    """Drop all parameters, buffers and children of ``module``; keep only ``name = conv``."""
    for attr in list(module._parameters) + list(module._buffers) + list(module._modules):
        delattr(module, attr)
    setattr(module, name, conv)


def switch_to_deploy(model):
    """``repvgg_model_convert``: every module with ``switch_to_deploy`` is fused in place."""
    for module in list(model.modules()):
        if hasattr(module, "switch_to_deploy"):
            module.switch_to_deploy()
    return model


# ------------------------------------------------------------------ RepVGG
class RepVGGBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.stride = stride
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_dense = conv_bn(cin, cout, 3, stride, 1)
        self.rbr_1x1 = conv_bn(cin, cout, 1, stride, 0)

    def forward(self, x):
        if hasattr(self, "rbr_reparam"):
            return F.relu(self.rbr_reparam(x))
        identity = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return F.relu(self.rbr_dense(x) + self.rbr_1x1(x) + identity)

    def switch_to_deploy(self):
        kernel, bias = fuse_bn(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        k1, b1 = fuse_bn(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel, bias = kernel + F.pad(k1, [1, 1, 1, 1]), bias + b1
        if self.rbr_identity is not None:
            cin = kernel.shape[1]
            ident = torch.zeros(cin, cin, 3, 3)
            ident[range(cin), range(cin), 1, 1] = 1.0
            ki, bi = fuse_bn(ident, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        become(self, "rbr_reparam", conv_with(kernel, bias, self.stride))


class RepVGG(nn.Module):
    def __init__(self, num_blocks, width_multiplier, num_classes=1000):
        super().__init__()
        a, b = width_multiplier[0], width_multiplier[3]
        cin = min(64, int(64 * a))
        self.stage0 = RepVGGBlock(3, cin, 2)
        for s, (width, n) in enumerate(zip((int(64 * a), int(128 * a), int(256 * a), int(512 * b)), num_blocks), 1):
            blocks = []
            for i in range(n):
                blocks.append(RepVGGBlock(cin, width, 2 if i == 0 else 1))
                cin = width
            setattr(self, f"stage{s}", nn.Sequential(*blocks))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        for s in range(5):
            x = getattr(self, f"stage{s}")(x)
        return self.linear(self.gap(x).flatten(1))


def repvgg_a0(num_classes=1000):
    return RepVGG([2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5], num_classes)


def repvgg_b0(num_classes=1000):
    return RepVGG([4, 6, 16, 1], [1, 1, 1, 2.5], num_classes)


# ------------------------------------------------------------------- ACNet
class ACBlock(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1, padding=1):
        super().__init__()
        self.square_conv = nn.Conv2d(cin, cout, (k, k), stride, padding, bias=False)
        self.square_bn = nn.BatchNorm2d(cout)
        self.ver_conv = nn.Conv2d(cin, cout, (k, 1), stride, (padding, padding - k // 2), bias=False)
        self.ver_bn = nn.BatchNorm2d(cout)
        self.hor_conv = nn.Conv2d(cin, cout, (1, k), stride, (padding - k // 2, padding), bias=False)
        self.hor_bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        if hasattr(self, "fused_conv"):
            return self.fused_conv(x)
        return (self.square_bn(self.square_conv(x)) + self.ver_bn(self.ver_conv(x))
                + self.hor_bn(self.hor_conv(x)))

    def switch_to_deploy(self):
        kernel, bias = fuse_bn(self.square_conv.weight, self.square_bn)
        kv, bv = fuse_bn(self.ver_conv.weight, self.ver_bn)
        kh, bh = fuse_bn(self.hor_conv.weight, self.hor_bn)
        c = kernel.shape[-1] // 2
        kernel = kernel.clone()
        kernel[:, :, :, c:c + 1] += kv
        kernel[:, :, c:c + 1, :] += kh
        become(self, "fused_conv", conv_with(kernel, bias + bv + bh, self.square_conv.stride))


# ------------------------------------------------------------------- OREPA
def frequency_prior(cout, k):
    """``fre_init``: row cosines for the first half of the channels, column cosines after."""
    prior = torch.zeros(cout, k, k)
    half = cout / 2
    for i in range(cout):
        for h in range(3):
            for w in range(3):
                prior[i, h, w] = (math.cos(math.pi * (h + 0.5) * (i + 1) / 3) if i < half
                                  else math.cos(math.pi * (w + 0.5) * (i + 1 - half) / 3))
    return prior


def dwsc2full(dw, pw, cin, groups=1):
    """OREPA's depthwise-separable -> full kernel, including its output permutation."""
    dw = dw.reshape(groups, cin // groups, 8, 1, *dw.shape[2:])
    pw = pw.squeeze().reshape(-1, groups, cin // groups, 8)
    full = torch.einsum("cgtihw,acgt->cagihw", dw, pw)
    return full.reshape(-1, cin // groups, *full.shape[-2:])


class OREPA(nn.Module):
    """OREPA conv (groups=1): six weight-space branches, one conv, one BN (unless weight_only)."""

    def __init__(self, cin, cout, k=3, stride=1, relu=False, weight_only=False):
        super().__init__()
        self.stride, self.k, self.cin, self.relu = stride, k, cin, relu
        p = lambda *shape: nn.Parameter(torch.empty(*shape))  # noqa: E731
        self.weight_orepa_origin = p(cout, cin, k, k)
        self.weight_orepa_avg_conv = p(cout, cin, 1, 1)
        self.weight_orepa_pfir_conv = p(cout, cin, 1, 1)
        self.register_buffer("weight_orepa_avg_avg", torch.ones(k, k) / k / k)
        self.weight_orepa_1x1 = p(cout, cin, 1, 1)
        self.weight_orepa_1x1_kxk_idconv1 = nn.Parameter(torch.zeros(cin, cin, 1, 1))
        self.register_buffer("id_tensor", torch.eye(cin).reshape(cin, cin, 1, 1))
        self.weight_orepa_1x1_kxk_conv2 = p(cout, cin, k, k)
        self.weight_orepa_gconv_dw = p(8 * cin, 1, k, k)
        self.weight_orepa_gconv_pw = p(cout, 8 * cin, 1, 1)
        for weight in (self.weight_orepa_origin, self.weight_orepa_avg_conv, self.weight_orepa_pfir_conv,
                       self.weight_orepa_1x1, self.weight_orepa_1x1_kxk_conv2, self.weight_orepa_gconv_dw,
                       self.weight_orepa_gconv_pw):
            nn.init.kaiming_uniform_(weight, a=0.0)
        self.vector = nn.Parameter(torch.tensor([0.25, 0.25, 0.0, 0.5, 1.0, 0.5])[:, None].repeat(1, cout))
        if not weight_only:
            self.bn = nn.BatchNorm2d(cout)
        self.register_buffer("weight_orepa_prior", frequency_prior(cout, k))

    def weight_gen(self):
        v = lambda j: self.vector[j].reshape(-1, 1, 1, 1)  # noqa: E731
        pad = self.k // 2
        conv1 = (self.weight_orepa_1x1_kxk_idconv1 + self.id_tensor)[:, :, 0, 0]
        branches = [
            self.weight_orepa_origin,
            torch.einsum("oi,hw->oihw", self.weight_orepa_avg_conv[:, :, 0, 0], self.weight_orepa_avg_avg),
            torch.einsum("oi,ohw->oihw", self.weight_orepa_pfir_conv[:, :, 0, 0], self.weight_orepa_prior),
            torch.einsum("ti,othw->oihw", conv1, self.weight_orepa_1x1_kxk_conv2),
            F.pad(self.weight_orepa_1x1, [pad] * 4),
            dwsc2full(self.weight_orepa_gconv_dw, self.weight_orepa_gconv_pw, self.cin),
        ]
        return sum(w * v(j) for j, w in enumerate(branches))

    def forward(self, x):
        if hasattr(self, "orepa_reparam"):
            y = self.orepa_reparam(x)
        else:
            y = self.bn(F.conv2d(x, self.weight_gen(), stride=self.stride, padding=self.k // 2))
        return F.relu(y) if self.relu else y

    def switch_to_deploy(self):
        if hasattr(self, "bn"):
            become(self, "orepa_reparam", conv_with(*fuse_bn(self.weight_gen(), self.bn), self.stride))


class OREPALargeConv(nn.Module):
    """(k-1)/2 stacked weight-only OREPA 3x3 generators, composed into one k x k kernel, + BN."""

    def __init__(self, cin, cout, k=7, stride=2, relu=True):
        super().__init__()
        self.layers, self.k, self.stride, self.relu = (k - 1) // 2, k, stride, relu
        for i in range(self.layers):
            setattr(self, f"weight{i}", OREPA(cin if i == 0 else cout, cout, 3, weight_only=True))
        self.bn = nn.BatchNorm2d(cout)

    def weight_gen(self):
        weight = self.weight0.weight_gen().transpose(0, 1)
        for i in range(1, self.layers):
            weight = F.conv2d(weight, getattr(self, f"weight{i}").weight_gen(), padding=2)
        return weight.transpose(0, 1)

    def forward(self, x):
        if hasattr(self, "or_large_reparam"):
            y = self.or_large_reparam(x)
        else:
            y = self.bn(F.conv2d(x, self.weight_gen(), stride=self.stride, padding=self.k // 2))
        return F.relu(y) if self.relu else y

    def switch_to_deploy(self):
        become(self, "or_large_reparam", conv_with(*fuse_bn(self.weight_gen(), self.bn), self.stride))


class ConvBN(nn.Module):
    """OREPA's plain conv + BN; deploy keeps the name ``conv`` (now with bias)."""

    def __init__(self, cin, cout, k, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.conv(x) if self.conv.bias is not None else self.bn(self.conv(x))

    def switch_to_deploy(self):
        become(self, "conv", conv_with(*fuse_bn(self.conv.weight, self.bn), self.conv.stride))


# ---------------------------------------------------- ResNet-18 variants
class BasicBlock(nn.Module):
    """ACNet / OREPA ``BasicBlock``: relu(conv2(conv1(x)) + shortcut(x))."""

    def __init__(self, variant, cin, cout, stride):
        super().__init__()
        if variant == "acnet":
            self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
            self.conv1 = nn.Sequential(OrderedDict(acb=ACBlock(cin, cout, 3, stride), relu=nn.ReLU()))
            self.conv2 = ACBlock(cout, cout)
        else:
            self.shortcut = ConvBN(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
            self.conv1 = OREPA(cin, cout, 3, stride, relu=True)
            self.conv2 = OREPA(cout, cout)

    def forward(self, x):
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class StageResNet18(nn.Module):
    """ACNet ``base_model/resnet.py`` / OREPA ``models/resnet.py`` layout (stage0..4, linear)."""

    def __init__(self, variant, num_classes=1000):
        super().__init__()
        stem = (nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 64, 7, 2, 3, bias=False), bn=nn.BatchNorm2d(64),
                                          relu=nn.ReLU()))
                if variant == "acnet" else OREPALargeConv(3, 64, 7, 2))
        self.stage0 = nn.Sequential(OrderedDict(conv1=stem, maxpool=nn.MaxPool2d(3, 2, 1)))
        cin = 64
        for s, (width, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), 1):
            setattr(self, f"stage{s}", nn.Sequential(BasicBlock(variant, cin, width, stride),
                                                     BasicBlock(variant, width, width, 1)))
            cin = width
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        for s in range(5):
            x = getattr(self, f"stage{s}")(x)
        return self.linear(self.gap(x).flatten(1))


class TVBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TVResNet18(nn.Module):
    """torchvision ``resnet18`` layout."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for s, (width, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2)), 1):
            setattr(self, f"layer{s}", nn.Sequential(TVBasicBlock(cin, width, stride), TVBasicBlock(width, width, 1)))
            cin = width
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_divisible(value, divisor=8):
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def conv_norm_act(cin, cout, k, stride=1, groups=1):
    """torchvision ``Conv2dNormActivation`` (conv, BN, ReLU6) as children 0, 1, 2."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = int(round(cin * t))
        self.use_res = stride == 1 and cin == cout
        layers = [conv_norm_act(cin, hidden, 1)] if t != 1 else []
        layers += [conv_norm_act(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                   nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class TVMobileNetV2(nn.Module):
    """torchvision ``mobilenet_v2`` layout."""
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))

    def __init__(self, num_classes=1000, width_mult=1.0):
        super().__init__()
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        features = [conv_norm_act(3, cin, 3, 2)]
        for t, c, n, s in self.SETTING:
            for i in range(n):
                features.append(InvertedResidual(cin, make_divisible(c * width_mult), s if i == 0 else 1, t))
                cin = make_divisible(c * width_mult)
        features.append(conv_norm_act(cin, last, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# ------------------------------------------------------------------- ECBSR
MASKS = {"conv1x1-sobelx": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
         "conv1x1-sobely": [[1, 2, 1], [0, 0, 0], [-1, -2, -1]],
         "conv1x1-laplacian": [[0, 1, 0], [1, -4, 1], [0, 1, 0]]}


class SeqConv3x3(nn.Module):
    def __init__(self, seq_type, cin, cout, depth_multiplier=1.0):
        super().__init__()
        self.type, self.cout = seq_type, cout
        if seq_type == "conv1x1-conv3x3":
            mid = int(cout * depth_multiplier)
            conv0, conv1 = nn.Conv2d(cin, mid, 1), nn.Conv2d(mid, cout, 3)
            self.k0, self.b0, self.k1, self.b1 = conv0.weight, conv0.bias, conv1.weight, conv1.bias
        else:
            conv0 = nn.Conv2d(cin, cout, 1)
            self.k0, self.b0 = conv0.weight, conv0.bias
            self.scale = nn.Parameter(torch.randn(cout, 1, 1, 1) * 1e-3)
            self.bias = nn.Parameter(torch.randn(cout) * 1e-3)
            mask = torch.tensor(MASKS[seq_type], dtype=torch.float32).expand(cout, 1, 3, 3).clone()
            self.mask = nn.Parameter(mask, requires_grad=False)

    def forward(self, x):
        y0 = F.pad(F.conv2d(x, self.k0, self.b0), (1, 1, 1, 1))
        border = self.b0.view(1, -1, 1, 1)
        y0[:, :, 0:1, :] = border
        y0[:, :, -1:, :] = border
        y0[:, :, :, 0:1] = border
        y0[:, :, :, -1:] = border
        if self.type == "conv1x1-conv3x3":
            return F.conv2d(y0, self.k1, self.b1)
        return F.conv2d(y0, self.scale * self.mask, self.bias, groups=self.cout)

    def rep_params(self):
        k0 = self.k0[:, :, 0, 0]
        if self.type == "conv1x1-conv3x3":
            return torch.einsum("omhw,mi->oihw", self.k1, k0), torch.einsum("omhw,m->o", self.k1, self.b0) + self.b1
        d = (self.scale * self.mask)[:, 0]
        return torch.einsum("ohw,oi->oihw", d, k0), self.b0 * d.sum((1, 2)) + self.bias


class ECB(nn.Module):
    """Branches in training mode, the fused conv in eval mode (as the official ECB)."""

    def __init__(self, cin, cout, depth_multiplier=2.0, act_type="prelu", with_idt=False):
        super().__init__()
        self.conv3x3 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv1x1_3x3 = SeqConv3x3("conv1x1-conv3x3", cin, cout, depth_multiplier)
        self.conv1x1_sbx = SeqConv3x3("conv1x1-sobelx", cin, cout)
        self.conv1x1_sby = SeqConv3x3("conv1x1-sobely", cin, cout)
        self.conv1x1_lpl = SeqConv3x3("conv1x1-laplacian", cin, cout)
        self.with_idt = with_idt and cin == cout
        self.act = nn.PReLU(cout) if act_type == "prelu" else None

    def seqs(self):
        return self.conv1x1_3x3, self.conv1x1_sbx, self.conv1x1_sby, self.conv1x1_lpl

    def forward(self, x):
        if self.training:
            y = self.conv3x3(x) + sum(seq(x) for seq in self.seqs()) + (x if self.with_idt else 0)
        else:
            y = F.conv2d(x, *self.rep_params(), padding=1)
        return y if self.act is None else self.act(y)

    def rep_params(self):
        kernel, bias = self.conv3x3.weight, self.conv3x3.bias
        for seq in self.seqs():
            k, b = seq.rep_params()
            kernel, bias = kernel + k, bias + b
        if self.with_idt:
            kernel = kernel + torch.eye(kernel.shape[0])[:, :, None, None] * F.pad(torch.ones(1, 1), [1, 1, 1, 1])
        return kernel, bias


class ECBSR(nn.Module):
    def __init__(self, module_nums=4, channel_nums=16, scale=2, colors=1, act_type="prelu"):
        super().__init__()
        self.backbone = nn.Sequential(
            ECB(colors, channel_nums, 2.0, act_type),
            *[ECB(channel_nums, channel_nums, 2.0, act_type) for _ in range(module_nums)],
            ECB(channel_nums, colors * scale * scale, 2.0, "linear"))
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x):
        return self.upsampler(self.backbone(x) + x)


class PlainSR(nn.Module):
    """``plainsr.py``: conv, PReLU, ..., conv in one ``backbone`` Sequential."""

    def __init__(self, module_nums=4, channel_nums=16, scale=2, colors=1):
        super().__init__()
        layers = [nn.Conv2d(colors, channel_nums, 3, padding=1), nn.PReLU(channel_nums)]
        for _ in range(module_nums):
            layers += [nn.Conv2d(channel_nums, channel_nums, 3, padding=1), nn.PReLU(channel_nums)]
        layers.append(nn.Conv2d(channel_nums, colors * scale * scale, 3, padding=1))
        self.backbone = nn.Sequential(*layers)
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x):
        return self.upsampler(self.backbone(x) + x)


def ecbsr_to_plainsr(model, module_nums=4, channel_nums=16, scale=2):
    """ECBSR's ``convert.py``: copy each ECB's (RK, RB) and PReLU slopes into PlainSR."""
    plain = PlainSR(module_nums, channel_nums, scale)
    convs = [m for m in plain.backbone if isinstance(m, nn.Conv2d)]
    acts = [m for m in plain.backbone if isinstance(m, nn.PReLU)]
    with torch.no_grad():
        for j, ecb in enumerate(model.backbone):
            kernel, bias = ecb.rep_params()
            convs[j].weight.copy_(kernel)
            convs[j].bias.copy_(bias)
            if ecb.act is not None:
                acts[j].weight.copy_(ecb.act.weight)
    return plain.eval()


# --------------------------------------------------------------- helpers
def randomize(module, seed=0):
    """Non-trivial values for everything the default init leaves constant or tiny:
    BN gamma/beta/running statistics, OREPA ``vector`` and ``idconv1``, ECB
    ``scale``/``bias`` and PReLU slopes. Returns ``module`` in eval mode."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                uniform(m.weight, 0.5, 1.5)
                uniform(m.bias, -0.2, 0.2)
                uniform(m.running_mean, -0.2, 0.2)
                uniform(m.running_var, 0.5, 2.0)
            elif isinstance(m, nn.PReLU):
                uniform(m.weight, 0.0, 0.5)
        for name, p in module.named_parameters():
            if name.endswith("vector"):
                uniform(p, 0.0, 0.6)
            elif name.endswith("idconv1"):
                uniform(p, -0.2, 0.2)
            elif name.endswith(".scale"):
                uniform(p, -0.3, 0.3)
            elif name.endswith(".bias") and p.dim() == 1 and "conv1x1_" in name:
                uniform(p, -0.2, 0.2)
    return module.eval()


def numpy_state_dict(module):
    """The state_dict as ``{key: np.ndarray}`` (what ``load_torch_state_dict`` takes)."""
    return {key: value.detach().cpu().numpy() for key, value in module.state_dict().items()}


def run(module, x_nhwc):
    """Apply ``module`` to an NHWC numpy batch; returns NHWC (or 2-D) numpy."""
    with torch.no_grad():
        y = module(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    y = y.numpy()
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y
