"""A small FP classifier for PTQ experiments when no checkpoint is given.

Adam(1e-3) + cross-entropy with ``keras.Model.fit`` for a few epochs on the dataset's train split
(augmented by the pipeline). Placeholder for the shared trainer (train.py).
"""

import keras
import tensorflow as tf

from repq import models
from repq.data import get_dataset

DEFAULT_EPOCHS = 3


def resized(ds, image_size):
    """Bilinearly resize the images of an (x, y) dataset to ``image_size`` (None: unchanged)."""
    if image_size is None:
        return ds
    return ds.map(lambda x, y: (tf.image.resize(x, (image_size, image_size)), y))


def train_fp_model(model_name, dataset="mnist5k", epochs=DEFAULT_EPOCHS, batch_size=64,
                   learning_rate=1e-3, seed=0, verbose=2, image_size=None, callbacks=None, **model_kwargs):
    """Build ``model_name`` for ``dataset`` and train it briefly -> trained ``keras.Model``.

    ``image_size``: resize the inputs (e.g. 16 for fast CPU experiments); None keeps them.
    ``callbacks``: passed to ``fit`` (ptq.py passes an InterruptHandler: SIGTERM/SIGINT stop it).
    """
    keras.utils.set_random_seed(seed)
    train, info = get_dataset(dataset, "train", batch_size, seed=seed)
    train = resized(train, image_size)
    shape = info.image_shape if image_size is None else (image_size, image_size, info.image_shape[-1])
    model = models.create_model(model_name, num_classes=info.num_classes, input_shape=shape,
                                **model_kwargs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(train, epochs=epochs, verbose=verbose, callbacks=callbacks)
    return model


def top1_accuracy(model, dataset, labels=None):
    """Top-1 accuracy (%) of ``model`` (logits) over an (x, y) dataset; a list ``labels`` receives the
    labels seen (e.g. to count the classes covered)."""
    predict = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1, output_type=tf.int32),
                          autograph=False)
    correct = total = 0
    for x, y in dataset:
        correct += int(tf.reduce_sum(tf.cast(predict(x) == tf.cast(y, tf.int32), tf.int32)))
        total += int(y.shape[0])
        if labels is not None:
            labels.extend(int(v) for v in y.numpy())
    return 100.0 * correct / max(total, 1)
