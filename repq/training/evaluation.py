"""Evaluation: top-1 accuracy (%) for classification, PSNR-Y (dB, shave = scale) for SR."""

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from repq.metrics import PSNR, psnr_y

TASKS = ("classification", "super_resolution")


def training_metrics(task, scale=None):
    """Metrics for ``model.compile``: accuracy, or :class:`repq.metrics.PSNR`."""
    if task == "classification":
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    return [PSNR(scale)]


def bicubic_upscale(scale):
    """``x (N, h, w, C) -> (N, h*scale, w*scale, C)`` by bicubic interpolation: the baseline an SR model must beat."""
    def upscale(x):
        height, width = int(x.shape[1]), int(x.shape[2])
        return tf.image.resize(x, (height * scale, width * scale), method="bicubic")
    return upscale


def evaluate(model, dataset, task, scale=None, predict=None, progress=None):
    """Run ``model`` in inference on ``dataset`` of ``(x, y)`` batches.

    ``predict``: ``x batch -> outputs`` used instead of the model's own call (e.g.
    ``repq.integer_predict``, the integer model's outputs); ``progress``: a description for a
    progress bar over the batches (none by default).
    Returns ``{"top1": %}`` (classification, y int labels) or ``{"psnr": dB}``
    (super-resolution, y HR images in 0..255; mean of per-image PSNR-Y with a
    ``scale``-pixel shave, ECBSR convention).
    """
    if task not in TASKS:
        raise ValueError(f"Invalid value for argument `task`. Expected one of {TASKS}. Received task={task!r}.")
    predict = predict or tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    values = []
    for x, y in tqdm(dataset, desc=progress, unit="batch", disable=progress is None):
        out = np.asarray(predict(x))
        if task == "classification":
            values.append(np.argmax(out, axis=-1) == y.numpy())
        else:
            values.append(psnr_y(tf.constant(out), y, scale).numpy())
    values = np.concatenate(values)
    if task == "classification":
        return {"top1": float(100.0 * values.mean())}
    return {"psnr": float(values.mean())}
