"""repq.callbacks in a tiny model.fit."""

import keras
import numpy as np
import tensorflow as tf

import repq
from repq.callbacks import BestDeployCheckpoint, QuantizationLogger, StepSizeInitializer, initialize_step_sizes
from repq.layers import RepVGGBlock
from repq.qat import quantize_model, quantized_layers


def _qat_model():
    inputs = keras.Input((8, 8, 3))
    x = RepVGGBlock(8, name="b0")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return quantize_model(keras.Model(inputs, keras.layers.Dense(2)(x), name="repvgg_tiny"), 4, 4)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, (x.mean(axis=(1, 2, 3)) > 0).astype("int32"))).batch(8)


def test_initialize_step_sizes_is_idempotent_and_keeps_bn_statistics():
    model, data = _qat_model(), _data()
    stats = [v.numpy().copy() for v in model.non_trainable_variables if "moving" in v.path]
    initialize_step_sizes(model, data)
    for layer in quantized_layers(model):
        assert float(layer.input_quantizer.initialized.numpy()) == 1.0
    steps = [layer.input_quantizer.step.numpy().copy() for layer in quantized_layers(model)]
    x_other = next(iter(data))[0] * 5.0
    initialize_step_sizes(model, x_other)
    for layer, step in zip(quantized_layers(model), steps):
        np.testing.assert_array_equal(layer.input_quantizer.step.numpy(), step)
    after = [v.numpy() for v in model.non_trainable_variables if "moving" in v.path]
    for a, b in zip(stats, after):
        np.testing.assert_array_equal(a, b)


def test_callbacks_in_model_fit(tmp_path):
    model, data = _qat_model(), _data()
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    best = tmp_path / "best.keras"
    model.fit(data, validation_data=data, epochs=2, verbose=0, callbacks=[
        StepSizeInitializer(data), QuantizationLogger(str(tmp_path / "tb"), every_n_batches=1),
        BestDeployCheckpoint(str(best), monitor="val_accuracy")])
    assert list((tmp_path / "tb" / "quantization").iterdir())
    deploy = keras.saving.load_model(str(best), compile=False)
    x = next(iter(data))[0]
    assert deploy(x).shape == (8, 2)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary files left
    np.testing.assert_array_equal(repq.reparametrize(model)(x).numpy(), model(x, training=False).numpy())
