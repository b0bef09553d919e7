"""Argument checks the benchmark scripts share."""

import os


def missing_fp_checkpoint(path, model):
    """The one-line error for an FP checkpoint ``path`` that is not a file (naming the train.py command
    that makes one for ``model``), or None when it is there."""
    if os.path.isfile(path):
        return None
    return (f"--fp_checkpoint {path!r} does not exist; train one with "
            f"`python train.py --model {model} --method fp`.")
