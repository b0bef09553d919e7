"""Rep blocks as Keras 3 layers; every one merges exactly into a single conv."""

from repq.layers.acb import ACBlock
from repq.layers.base import RepConvBlock
from repq.layers.conv_bn import ConvBN
from repq.layers.ecb import ECBlock
from repq.layers.orepa import OREPABlock, OREPAKernel, OREPALargeConv
from repq.layers.padded_conv import PaddedConv2D
from repq.layers.repvgg import RepVGGBlock
from repq.layers.upsample import PixelShuffleResidual

__all__ = ["ACBlock", "ConvBN", "ECBlock", "OREPABlock", "OREPAKernel", "OREPALargeConv",
           "PaddedConv2D", "PixelShuffleResidual", "RepConvBlock", "RepVGGBlock"]
