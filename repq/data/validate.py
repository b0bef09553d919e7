"""Checks on image batches handed to the library (PTQ calibration, export data)."""

import numpy as np


def check_images(x, input_shape=None, what="images"):
    """Raise unless ``x`` is a finite float batch ``(N, *input_shape)`` (None in ``input_shape``: any size).

    Raises:
      TypeError: not a float array (e.g. raw uint8 pixels).
      ValueError: wrong rank or size, or NaN/Inf values.
    """
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{what} must be float arrays preprocessed like the training data "
                        f"(repq.data.preprocess_images), got dtype {x.dtype}.")
    if input_shape is not None:
        want = tuple(input_shape)
        if x.ndim != len(want) + 1 or any(w is not None and g != w for g, w in zip(x.shape[1:], want)):
            raise ValueError(f"{what} have shape {x.shape}, the model takes (N, "
                             f"{', '.join('?' if w is None else str(w) for w in want)}).")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or Inf.")
