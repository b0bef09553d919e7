"""repq.callbacks in a tiny model.fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import repq
from repq.callbacks import (BestDeployCheckpoint, FreezeNormStatistics, QuantizationLogger, StepSizeInitializer,
                            initialize_step_sizes, norm_folding_blocks, set_norm_statistics_frozen)
from repq.layers import RepVGGBlock
from repq.qat import quantize_model, quantized_layers
from tests.conftest import moving_statistics


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
    stats = moving_statistics(model)
    initialize_step_sizes(model, data)
    for layer in quantized_layers(model):
        assert float(layer.input_quantizer.initialized.numpy()) == 1.0
    steps = [layer.input_quantizer.step.numpy().copy() for layer in quantized_layers(model)]
    x_other = next(iter(data))[0] * 5.0
    initialize_step_sizes(model, x_other)
    for layer, step in zip(quantized_layers(model), steps):
        np.testing.assert_array_equal(layer.input_quantizer.step.numpy(), step)
    after = moving_statistics(model)
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


def test_frozen_norm_statistics_train_on_the_deployed_kernel():
    """Frozen, a training call computes the inference (= deployed) model and leaves the moving statistics alone."""
    model, data = _qat_model(), _data()
    x = next(iter(data))[0]
    initialize_step_sizes(model, x)
    stats = moving_statistics(model)
    assert set_norm_statistics_frozen(model, True) == 1
    np.testing.assert_array_equal(model(x, training=True).numpy(), repq.reparametrize(model)(x).numpy())
    for a, b in zip(stats, moving_statistics(model)):
        np.testing.assert_array_equal(a, b)
    set_norm_statistics_frozen(model, False)  # batch statistics again: another kernel, statistics updated
    assert not np.allclose(model(x, training=True).numpy(), model(x, training=False).numpy())
    assert any(not np.array_equal(a, b) for a, b in zip(stats, moving_statistics(model)))


def test_freeze_norm_statistics_callback_freezes_from_its_epoch_and_ends_unfrozen():
    model, data = _qat_model(), _data()
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    initial, seen = moving_statistics(model), []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(moving_statistics(model)))
    model.fit(data, epochs=3, verbose=0, callbacks=[FreezeNormStatistics(1, verbose=0), record])
    assert any(not np.array_equal(a, b) for a, b in zip(initial, seen[0]))  # epoch 0: batch statistics
    for a, b in zip(seen[0], seen[2]):  # epochs 1 and 2: frozen
        np.testing.assert_array_equal(a, b)
    assert not any(layer.norm_statistics_frozen for layer in norm_folding_blocks(model))


def test_freeze_norm_statistics_needs_a_model_with_norms():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    model = quantize_model(keras.Model(inputs, keras.layers.Dense(2)(x)), 4, 4)
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="no rep block that folds a norm"):
        model.fit(_data(), epochs=1, verbose=0, callbacks=[FreezeNormStatistics(0)])
    with pytest.raises(ValueError, match="after_epochs must be an integer >= 0"):
        FreezeNormStatistics(-1)
