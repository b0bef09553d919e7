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


def normalize_pad(pad):
    """``pad``: an int (every side) or ``((top, bottom), (left, right))`` -> that int when all four
    sides are equal, else the nested tuple of ints."""
    if isinstance(pad, (int, float)):
        return int(pad)
    (top, bottom), (left, right) = pad
    return int(top) if top == bottom == left == right else ((int(top), int(bottom)), (int(left), int(right)))


def pad_amounts(pad):
    """``pad`` (see :func:`normalize_pad`) -> ``((top, bottom), (left, right))``."""
    pad = normalize_pad(pad)
    return ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad


def zero_pad(x, pad):
    """Zero-pad an NHWC tensor by ``pad`` (see :func:`normalize_pad`) pixels."""
    (top, bottom), (left, right) = pad_amounts(pad)
    if top == bottom == left == right == 0:
        return x
    return ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])


def same_padding(size, kernel_size, stride, dilation=1):
    """TensorFlow's ``padding="same"`` for one spatial axis of ``size`` pixels -> ``(before, after)``.

    TF (and TFLite) pad ``total = max((ceil(size / stride) - 1) * stride + span - size, 0)`` with
    ``span = (kernel_size - 1) * dilation + 1``, the smaller half before: asymmetric for an even
    total (stride 2 on even sizes), so it depends on ``size``.
    """
    span = (kernel_size - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


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
    """``Conv2D`` that zero-pads ``pad`` pixels, then convolves 'valid'.

    Args:
      pad: int, pixels of zero padding on top/bottom/left/right; or ``((top, bottom),
        (left, right))``, e.g. TF's asymmetric ``'same'`` padding for a fixed input size
        (:func:`same_padding`).
      Other args as ``keras.layers.Conv2D`` (``padding`` is always "valid").
    """

    def __init__(self, filters, kernel_size, pad=0, **kwargs):
        kwargs.pop("padding", None)
        super().__init__(filters, kernel_size, padding="valid", **kwargs)
        if tuple(self.dilation_rate) != (1, 1):
            raise ValueError(f"{self.name}: dilation_rate {self.dilation_rate} is not supported by repq's deploy "
                             "convs (nor by its integer export); use dilation_rate=1.")
        self.pad = normalize_pad(pad)

    def call(self, inputs):
        return super().call(zero_pad(inputs, self.pad))

    def convolution_op(self, inputs, kernel):
        return conv2d(inputs, kernel, self.strides, self.groups)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        (top, bottom), (left, right) = pad_amounts(self.pad)
        padded = (n, None if h is None else h + top + bottom, None if w is None else w + left + right, c)
        return super().compute_output_shape(padded)

    def get_config(self):
        config = super().get_config()
        config["pad"] = self.pad
        return config
