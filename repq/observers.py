"""Observers (no gradients) on the quantizers' grid: the MSE step search of :mod:`repq.quantizers`, per
batch, EMA'd.

One search serves QAT's step initialisation (one batch, inside the quantizer) and PTQ's calibration
(:func:`repq.quantizers.mse_initial_step`: MQBench's ``MSEObserver`` scoring, p = 2.4, 80
shrinking ranges, symmetric with zero point 0). PTQ follows MQBench's ``EMAMSEObserver``: a
search on every calibration batch, an EMA (ratio 0.9) of the chosen steps; a symmetric grid's
step is proportional to its range, so that is the EMA of the chosen ranges.
"""

from keras import ops

from repq.quantizers import mse_initial_step

EMA_RATIO = 0.9


class EMAStepObserver:
    """Per-tensor MSE step search on every batch, EMA (ratio 0.9) of the chosen steps."""

    def __init__(self, qmin, qmax):
        self.qmin, self.qmax = qmin, qmax
        self.value = None

    def update(self, x):
        """Observe one batch (array of any shape, examples first)."""
        step = float(ops.convert_to_numpy(mse_initial_step(x, self.qmin, self.qmax)))
        self.value = step if self.value is None else EMA_RATIO * self.value + (1 - EMA_RATIO) * step

    def step(self):
        """The observed step (float); raises if nothing was observed."""
        if self.value is None:
            raise ValueError("observer saw no data.")
        return self.value
