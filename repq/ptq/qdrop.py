"""QDrop (Wei et al., ICLR 2022): elementwise mixing of quantized and FP activations."""

import keras
from keras import ops


def drop_mix(x_quant, x_float, prob, seed=None):
    """Each element keeps ``x_quant`` with probability ``prob``, else ``x_float``.

    A fresh mask per call; ``seed``: a ``keras.random.SeedGenerator`` (deterministic stream).
    """
    noise = keras.random.uniform(ops.shape(x_quant), seed=seed)
    return ops.where(noise < prob, x_quant, x_float)


class QDrop:
    """An activation quantizer's ``drop`` (:class:`repq.quantizers.LSQQuantizer`): keep the quantized
    value with probability ``prob`` (a variable, 1.0 = no dropping), else the float one."""

    def __init__(self):
        self.prob = keras.Variable(1.0, trainable=False, name="qdrop_prob")
        self.seed_generator = keras.random.SeedGenerator(0)

    def __call__(self, x_quant, x_float):
        return ops.cond(self.prob < 1.0, lambda: drop_mix(x_quant, x_float, self.prob, self.seed_generator),
                        lambda: x_quant)

    def start(self, prob, seed):
        """Drop with ``prob`` from now on; the mask stream restarts from ``seed`` (an int < 2**31)."""
        self.prob.assign(prob)
        self.seed_generator.state.assign(ops.cast(ops.convert_to_tensor([seed, 0]),
                                                  self.seed_generator.state.dtype))
