"""Convolution with explicit symmetric zero padding (the deploy form of rep blocks).

Keras ``padding="same"`` pads asymmetrically for stride 2 (0 before, 1 after on
even sizes), which moves the sampling grid and breaks branch fusion. Every conv
in repq pads ``pad`` pixels on each side and then runs a ``"valid"`` conv, like
PyTorch's ``padding=pad``.
"""

import keras
from keras import ops


def symmetric_pad(x, pad):
    """Zero-pad an NHWC tensor by ``pad`` pixels on every spatial side."""
    if pad == 0:
        return x
    return ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])


def conv2d(x, kernel, strides=1, groups=1):
    """'valid' NHWC convolution with an HWIO kernel ``(kh, kw, in/groups, out)``.

    Depthwise kernels (``groups == in``, output ``c*m + q`` from input ``c``) run
    as ``depthwise_conv``: TF's grouped conv needs XLA on CPU, which is slow and
    does not convert to TFLite. Other groupings use the grouped conv.
    """
    in_channels = x.shape[-1]
    if groups > 1 and groups == in_channels:
        kh, kw, _, out = kernel.shape
        depthwise = ops.reshape(kernel, (kh, kw, in_channels, out // in_channels))
        return ops.depthwise_conv(x, depthwise, strides=strides, padding="valid")
    return ops.conv(x, kernel, strides=strides, padding="valid")


@keras.saving.register_keras_serializable(package="repq")
class PaddedConv2D(keras.layers.Conv2D):
    """``Conv2D`` that zero-pads ``pad`` pixels on each side, then convolves 'valid'.

    Args:
      pad: int, pixels of zero padding on top/bottom/left/right.
      Other args as ``keras.layers.Conv2D`` (``padding`` is always "valid").
    """

    def __init__(self, filters, kernel_size, pad=0, **kwargs):
        kwargs.pop("padding", None)
        super().__init__(filters, kernel_size, padding="valid", **kwargs)
        self.pad = int(pad)

    def call(self, inputs):
        return super().call(symmetric_pad(inputs, self.pad))

    def convolution_op(self, inputs, kernel):
        return conv2d(inputs, kernel, self.strides, self.groups)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        padded = (n, None if h is None else h + 2 * self.pad,
                  None if w is None else w + 2 * self.pad, c)
        return super().compute_output_shape(padded)

    def get_config(self):
        config = super().get_config()
        config["pad"] = self.pad
        return config
