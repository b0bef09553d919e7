"""Deploy forms of QAT layers: one conv/dense with the learned quantization baked in.

The kernel is stored already on its grid (``q * s``) and both the input and the
kernel pass through TF's fake-quant ops with the learned steps
(:func:`repq.quantizers.export_fake_quant`), which the TFLite converter turns
into int8 tensors with exactly these scales. In Keras the layer computes the
same values as the QAT layer in inference mode.
"""

import keras
from keras import ops

from repq.layers.padded_conv import PaddedConv2D, zero_pad
from repq.qat.quantizable import spec_for
from repq.quantizers import export_fake_quant, integer_range


class QuantizedMixin:
    """Shared state of the quantized deploy layers: steps and bit widths."""

    def _init_quant(self, weight_bits, act_bits, input_signed):
        self.weight_bits, self.act_bits, self.input_signed = weight_bits, act_bits, bool(input_signed)

    def _build_quant(self, out_channels):
        self.weight_step = self.add_weight(name="weight_step", shape=(out_channels,), trainable=False,
                                           initializer="ones")
        self.input_step = self.add_weight(name="input_step", shape=(), trainable=False, initializer="ones")

    def quantize_input(self, x):
        if self.act_bits is None:
            return x
        qmin, qmax = integer_range(self.act_bits, self.input_signed)
        return export_fake_quant(x, self.input_step, qmin, qmax, self.act_bits)

    def quantized_kernel(self):
        return self.fake_quant_kernel(self.kernel)

    def fake_quant_kernel(self, kernel):
        """``kernel`` (output channels last) through the per-channel weight fake-quant."""
        qmin, qmax = integer_range(self.weight_bits, True)
        return export_fake_quant(kernel, self.weight_step, qmin, qmax, self.weight_bits, per_channel=True)

    # Conv2D/Dense save only kernel and bias; the learned steps must travel too.
    def save_own_variables(self, store):
        for i, variable in enumerate(self.weights):
            store[str(i)] = variable

    def load_own_variables(self, store):
        for i, variable in enumerate(self.weights):
            variable.assign(store[str(i)])

    def _quant_config(self, config):
        config.update(weight_bits=self.weight_bits, act_bits=self.act_bits, input_signed=self.input_signed)
        return config


@keras.saving.register_keras_serializable(package="repq")
class QuantizedConv2D(QuantizedMixin, PaddedConv2D):
    """``act(conv(FQ_a(pad(x)), FQ_w(kernel)) + bias)`` with learned steps (deploy form)."""

    def __init__(self, filters, kernel_size, weight_bits=8, act_bits=8, input_signed=True, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self._init_quant(weight_bits, act_bits, input_signed)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_quant(self.filters)

    def call(self, inputs):
        x = zero_pad(self.quantize_input(inputs), self.pad)
        y = self.convolution_op(x, self.quantized_kernel())
        if self.use_bias:
            y = y + self.bias
        return self.activation(y)

    def get_config(self):
        return self._quant_config(super().get_config())


@keras.saving.register_keras_serializable(package="repq")
class QuantizedDense(QuantizedMixin, keras.layers.Dense):
    """``act(FQ_a(x) @ FQ_w(kernel) + bias)`` with learned steps (deploy form)."""

    def __init__(self, units, weight_bits=8, act_bits=8, input_signed=True, **kwargs):
        super().__init__(units, **kwargs)
        self._init_quant(weight_bits, act_bits, input_signed)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_quant(self.units)

    def call(self, inputs):
        y = ops.matmul(self.quantize_input(inputs), self.quantized_kernel())
        if self.use_bias:
            y = y + self.bias
        return self.activation(y)

    def get_config(self):
        return self._quant_config(super().get_config())


@keras.saving.register_keras_serializable(package="repq")
class QuantizedCustom(QuantizedMixin, keras.layers.Layer):
    """``apply(layer, FQ_a(x), FQ_w(kernel), bias)`` for a registered layer class (deploy form).

    ``layer`` holds the kernel already on its grid and the bias on the int32 grid
    (:meth:`set_quantized`); its class is registered with :func:`repq.register_quantizable`.
    """

    def __init__(self, layer, weight_bits=8, act_bits=8, input_signed=True, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer
        self.spec = spec_for(layer)
        if self.spec is None:
            raise ValueError(f"{type(layer).__name__} (layer {layer.name!r}) is not registered with "
                             "repq.register_quantizable; register it before loading this model.")
        self._init_quant(weight_bits, act_bits, input_signed)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        kernel, _ = self.spec.kernel_and_bias(self.layer)
        self._build_quant(kernel.shape[-1])

    def set_quantized(self, kernel, bias, weight_step, input_step):
        """Store the quantized kernel (its layer's shape), bias (out,) and the steps."""
        own_kernel, own_bias = self.spec.kernel_and_bias(self.layer)
        own_kernel.assign(kernel)
        if own_bias is not None:
            own_bias.assign(bias)
        elif ops.any(ops.not_equal(bias, 0)):
            raise ValueError(f"{self.name}: a layer without a bias cannot hold a non-zero bias.")
        self.weight_step.assign(weight_step)
        self.input_step.assign(input_step)

    def call(self, inputs):
        kernel, bias = self.spec.kernel_and_bias(self.layer)
        kernel = self.fake_quant_kernel(kernel)
        bias = ops.zeros((kernel.shape[-1],)) if bias is None else bias
        return self.spec.apply(self.layer, self.quantize_input(inputs), kernel, bias)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    # The steps are this layer's own variables; the wrapped layer saves its kernel and bias.
    save_own_variables = keras.layers.Layer.save_own_variables
    load_own_variables = keras.layers.Layer.load_own_variables

    def get_config(self):
        config = self._quant_config(super().get_config())
        config["layer"] = keras.saving.serialize_keras_object(self.layer)
        return config

    @classmethod
    def from_config(cls, config):
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)
