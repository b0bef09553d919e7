"""QAT wrappers: fake-quantize a layer's input and its (merged) kernel, run ONE conv.

``QuantRepConv`` wraps a rep block (RepQ): every call merges the live branch
variables into one kernel (BN folded with batch statistics in training for
RepQ-BN, estimated statistics for BNEst, moving statistics in inference, and in
training too once :class:`repq.callbacks.FreezeNormStatistics` froze them),
fake-quantizes that kernel per output channel and the input per tensor, and
convolves once - the computation the deployed integer model performs.
``QuantConv2D`` does the same for a plain ``Conv2D`` (the merged-LSQ baseline),
``QuantDense`` for the classifier and ``QuantCustom`` for a layer class registered
with :func:`repq.register_quantizable`.
"""

import keras
from keras import ops

from repq.layers.padded_conv import same_padding, zero_pad
from repq.qat.deploy import QuantizedConv2D, QuantizedCustom, QuantizedDense
from repq.qat.quantizable import spec_for
from repq.qat.range_quant import RangeFakeQuant
from repq.quantizers import ActivationQuantizer, WeightQuantizer, round_ste
from repq.graph import copy_layer


class QuantWrapper(keras.layers.Layer):
    """Holds the wrapped ``layer`` and its input/weight quantizers.

    Args:
      layer: the float layer whose variables are trained.
      weight_bits, act_bits: bit widths; ``act_bits=None`` leaves the input float.
      input_signed: whether the input grid is signed (False after a ReLU).
    """

    def __init__(self, layer, weight_bits, act_bits=None, input_signed=True, **kwargs):
        kwargs.setdefault("name", f"quant_{layer.name}")
        super().__init__(**kwargs)
        self.layer = layer
        self.weight_bits, self.act_bits, self.input_signed = weight_bits, act_bits, bool(input_signed)
        self.weight_quantizer = WeightQuantizer(weight_bits, name="weight_quantizer")
        self.input_quantizer = (None if act_bits is None else
                                ActivationQuantizer(act_bits, signed=input_signed, name="input_quantizer"))

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        if self.input_quantizer is not None:
            self.input_quantizer.build(input_shape)
        kernel, _ = self.float_kernel_and_bias()
        self.weight_quantizer.build(kernel.shape)
        self.weight_quantizer.initialize_from(kernel)

    def quantize_input(self, x, training):
        return x if self.input_quantizer is None else self.input_quantizer(x, training=training)

    def float_kernel_and_bias(self, inputs=None, training=False):
        """The float kernel (HWIO, or (in, out) for dense) and bias the layer computes with."""
        raise NotImplementedError

    def quantized_kernel_and_bias(self, inputs=None, training=False):
        """The kernel on its learned grid and the bias on the integer conv's int32 grid."""
        kernel, bias = self.float_kernel_and_bias(inputs, training)
        return self.weight_quantizer(kernel, training=training), self.quantize_bias(bias)

    def quantize_bias(self, bias):
        """Round ``bias`` (out,) to multiples of input step x weight step, as TFLite stores it (int32).

        Straight-through gradient; with a float input (``act_bits=None``) the bias stays float.
        """
        if self.input_quantizer is None:
            return bias
        step = ops.stop_gradient(self.input_quantizer.positive_step() * self.weight_quantizer.positive_step())
        return round_ste(bias / step) * step

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def deploy_layer(self):
        """The inference form: one quantized conv/dense (:mod:`repq.qat.deploy`)."""
        raise NotImplementedError

    def _build_deployed(self, layer_cls, config, input_shape):
        """``layer_cls(**config)`` holding the quantized kernel and bias and the learned steps.

        The deployed layer always has a bias (zeros for a ``use_bias=False`` layer), as the
        integer conv/dense it becomes does.
        """
        kernel, bias = self.float_kernel_and_bias()
        bias = self.quantize_bias(bias)
        deployed = layer_cls(weight_bits=self.weight_bits, act_bits=self.act_bits,
                             input_signed=self.input_signed, **dict(config, use_bias=True))
        deployed.build(input_shape)
        in_step = (self.input_quantizer.positive_step() if self.input_quantizer is not None
                   else ops.ones(()))
        deployed.set_weights([ops.convert_to_numpy(t) for t in (
            self.weight_quantizer(kernel, training=False), bias,
            self.weight_quantizer.positive_step(), in_step)])
        return deployed

    def get_config(self):
        config = super().get_config()
        config.update(layer=keras.saving.serialize_keras_object(self.layer), weight_bits=self.weight_bits,
                      act_bits=self.act_bits, input_signed=self.input_signed)
        return config

    @classmethod
    def from_config(cls, config):
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="repq")
class QuantRepConv(QuantWrapper):
    """RepQ: ``act(conv(Q_a(x), Q_w(M(W_1..W_n))) + bias)`` for a :class:`RepConvBlock`.

    A PReLU block also rounds the conv output to 8 bits before the PReLU
    (``preact_quantizer``, a :class:`RangeFakeQuant`): integer TFLite cannot fuse
    PReLU into the conv and holds that tensor in int8.
    """

    def __init__(self, layer, weight_bits, act_bits=None, input_signed=True, bn_variance_floor=False, **kwargs):
        super().__init__(layer, weight_bits, act_bits, input_signed, **kwargs)
        # Training folds each branch BN with max(batch, moving) variance (RepConvBlock.merged_kernel_and_bias).
        self.bn_variance_floor = bool(bn_variance_floor)
        self.preact_quantizer = (RangeFakeQuant(name="preact_quantizer")
                                 if getattr(layer, "activation", None) == "prelu" else None)
        # Set by repq.callbacks.FreezeNormStatistics: training folds the branch norms with their
        # moving statistics (the deployed kernel) and stops updating them. A training-time switch,
        # not saved with the model.
        self.norm_statistics_frozen = False

    def build(self, input_shape):
        super().build(input_shape)
        if self.preact_quantizer is not None:
            self.preact_quantizer.build(self.compute_output_shape(input_shape))

    def float_kernel_and_bias(self, inputs=None, training=False):
        return self.layer.merged_kernel_and_bias(inputs, training=training and not self.norm_statistics_frozen,
                                                 variance_floor=self.bn_variance_floor)

    def call(self, inputs, training=False):
        x = self.quantize_input(inputs, training)
        kernel, bias = self.quantized_kernel_and_bias(x, training)
        y = self.layer.convolve(x, kernel) + bias
        if self.preact_quantizer is not None:
            y = self.preact_quantizer(y, training=training)
        return self.layer.activate(y)

    def deploy_layer(self):
        block = self.layer
        conv = self._build_deployed(QuantizedConv2D, block.deploy_conv_config(),
                                    (None, None, None, block.in_channels))
        deployed = block.with_activation(conv)
        if self.preact_quantizer is None:
            return deployed
        return keras.Sequential([conv, copy_layer(self.preact_quantizer), deployed.layers[-1]], name=block.name)

    def get_config(self):
        config = super().get_config()
        if self.bn_variance_floor:  # only when set: files of the default stay loadable by earlier versions
            config.update(bn_variance_floor=True)
        return config


@keras.saving.register_keras_serializable(package="repq")
class QuantConv2D(QuantWrapper):
    """Merged-LSQ baseline: LSQ on a plain (e.g. reparametrized) ``Conv2D``/``PaddedConv2D``."""

    def float_kernel_and_bias(self, inputs=None, training=False):
        bias = self.layer.bias if self.layer.use_bias else ops.zeros((self.layer.filters,))
        return self.layer.kernel, bias

    def call(self, inputs, training=False):
        x = zero_pad(self.quantize_input(inputs, training), getattr(self.layer, "pad", 0))
        kernel, bias = self.quantized_kernel_and_bias(x, training)
        y = self.layer.convolution_op(x, kernel) + bias
        return self.layer.activation(y)

    def deploy_layer(self):
        conv = self.layer
        config = conv.get_config()
        if config.pop("padding") == "same":
            config["pad"] = self._same_padding()
        config.setdefault("pad", 0)
        in_channels = conv.kernel.shape[-2] * conv.groups
        return self._build_deployed(QuantizedConv2D, config, (None, None, None, in_channels))

    def _same_padding(self):
        """Keras/TF ``'same'`` as explicit ``pad``: what TF (and TFLite) pad, so deploying is exact.

        With stride 1 and odd kernels that is ``k // 2`` on every side for any input size; otherwise
        it depends on the input size (asymmetric for stride 2 on even sizes), which must be fixed.
        """
        conv = self.layer
        (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.strides, conv.dilation_rate
        if (sh, sw) == (1, 1) and kh % 2 and kw % 2:
            return (((kh - 1) * dh // 2,) * 2, ((kw - 1) * dw // 2,) * 2)
        try:
            height, width = self.input.shape[1:3]
        except (AttributeError, ValueError):  # not called in a functional graph
            height = width = None
        if height is None or width is None:
            raise ValueError(f"{conv.name}: 'same' padding with stride {conv.strides} pads by an amount that "
                             "depends on the input size, and this model's input size is not fixed; build the "
                             "model with a fixed input shape (keras.Input((H, W, C))) to deploy it.")
        return (same_padding(height, kh, sh, dh), same_padding(width, kw, sw, dw))


@keras.saving.register_keras_serializable(package="repq")
class QuantDense(QuantWrapper):
    """LSQ on a ``Dense`` layer: per-output-unit weight steps, per-tensor input step."""

    def float_kernel_and_bias(self, inputs=None, training=False):
        bias = self.layer.bias if self.layer.use_bias else ops.zeros((self.layer.units,))
        return self.layer.kernel, bias

    def call(self, inputs, training=False):
        x = self.quantize_input(inputs, training)
        kernel, bias = self.quantized_kernel_and_bias(x, training)
        return self.layer.activation(ops.matmul(x, kernel) + bias)

    def deploy_layer(self):
        return self._build_deployed(QuantizedDense, self.layer.get_config(),
                                    (None, self.layer.kernel.shape[0]))



@keras.saving.register_keras_serializable(package="repq")
class QuantCustom(QuantWrapper):
    """LSQ on a registered layer class: ``apply(layer, Q_a(x), Q_w(kernel), bias)``.

    The kernel and bias come from the class's ``kernel_and_bias`` and the computation from its
    ``apply`` (:class:`repq.qat.quantizable.QuantizableSpec`); weight steps are per output
    channel (the kernel's last axis), the input step per tensor.
    """

    def __init__(self, layer, weight_bits, act_bits=None, input_signed=True, **kwargs):
        self.spec = spec_for(layer)
        if self.spec is None:
            raise ValueError(f"{type(layer).__name__} (layer {layer.name!r}) is not registered with "
                             "repq.register_quantizable; register it before building or loading this model.")
        super().__init__(layer, weight_bits, act_bits, input_signed, **kwargs)

    def float_kernel_and_bias(self, inputs=None, training=False):
        kernel, bias = self.spec.kernel_and_bias(self.layer)
        return kernel, ops.zeros((kernel.shape[-1],)) if bias is None else bias

    def call(self, inputs, training=False):
        x = self.quantize_input(inputs, training)
        kernel, bias = self.quantized_kernel_and_bias(x, training)
        return self.spec.apply(self.layer, x, kernel, bias)

    def deploy_layer(self):
        kernel, bias = self.float_kernel_and_bias()
        deployed = QuantizedCustom(copy_layer(self.layer), self.weight_bits, self.act_bits, self.input_signed,
                                   name=self.name)
        deployed.build(self.layer.get_build_config()["input_shape"])
        in_step = self.input_quantizer.positive_step() if self.input_quantizer is not None else ops.ones(())
        deployed.set_quantized(self.weight_quantizer(kernel, training=False), self.quantize_bias(bias),
                               self.weight_quantizer.positive_step(), in_step)
        return deployed
