"""QDrop (Wei et al., ICLR 2022): elementwise mixing of quantized and FP activations."""

import keras
from keras import ops


def drop_mix(x_quant, x_float, prob, seed=None):
    """Each element keeps ``x_quant`` with probability ``prob``, else ``x_float``.

    A fresh mask per call; ``seed``: a ``keras.random.SeedGenerator`` (deterministic stream).
    """
    noise = keras.random.uniform(ops.shape(x_quant), seed=seed)
    return ops.where(noise < prob, x_quant, x_float)
