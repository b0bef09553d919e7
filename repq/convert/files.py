"""Reading checkpoints into ``{official key: numpy array}`` (PyTorch layout).

``.pth``/``.pt`` need torch (``pip install .[torch]``), ``.safetensors`` needs
safetensors (``pip install .[safetensors]``); ``.npz`` needs nothing. Training
checkpoints wrapped as ``{"state_dict": ...}`` or ``{"model": ...}`` are
unwrapped and DataParallel's ``module.`` prefix is removed.
"""

import os

import numpy as np

TORCH_SUFFIXES = (".pth", ".pt")
DATA_PARALLEL_PREFIX = "module."


def read_state_dict(path):
    """``{key: np.ndarray}`` from a ``.pth``/``.pt``, ``.npz`` or ``.safetensors`` file.

    Raises:
      FileNotFoundError: no such file.
      ValueError: unsupported suffix or content.
      ImportError: torch / safetensors needed but not installed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in TORCH_SUFFIXES:
        state = read_torch(path)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            state = {key: archive[key] for key in archive.files}
    elif suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        raise ValueError(f"unsupported checkpoint {path!r}: use .pth/.pt, .npz or .safetensors.")
    return strip_data_parallel(state)


def read_torch(path):
    """A torch checkpoint's state_dict as numpy (floats as float32), loaded weights-only."""
    try:
        import torch
    except ImportError as err:
        raise ImportError("reading PyTorch checkpoints needs torch: pip install .[torch]") from err
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickling/zip errors of many types
        raise ValueError(f"cannot read {path!r} as a weights-only PyTorch checkpoint: {err}") from err
    state = unwrap(checkpoint)
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state_dict.")
    arrays = {}
    for key, tensor in state.items():
        if not torch.is_tensor(tensor):
            raise ValueError(f"{path!r}: entry {key!r} is a {type(tensor).__name__}, not a tensor.")
        tensor = tensor.detach().cpu()
        arrays[key] = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    return arrays


def read_safetensors(path):
    try:
        from safetensors.numpy import load_file
    except ImportError as err:
        raise ImportError("reading .safetensors needs safetensors: pip install .[safetensors]") from err
    return load_file(path)


def unwrap(checkpoint):
    """The state_dict inside a training checkpoint ``{"state_dict"|"model": ..., ...}``."""
    for key in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def strip_data_parallel(state):
    """Drop the ``module.`` prefix that (Distributed)DataParallel adds to every key."""
    if state and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        return {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in state.items()}
    return state
