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
        state = read_npz(path)
    elif suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        raise ValueError(f"unsupported checkpoint {path!r}: use .pth/.pt, .npz or .safetensors.")
    return strip_data_parallel(state)


def check_not_empty(path):
    """Raise ValueError for a 0-byte file (a failed download) before a reader's own obscure error."""
    if os.path.getsize(path) == 0:
        suffix = os.path.splitext(path)[1].lower()
        raise ValueError(f"{path!r} is empty (0 bytes), not a {suffix} checkpoint; pass the downloaded file "
                         "(a download may have failed).")


def read_torch(path):
    """A torch checkpoint's state_dict as numpy (floats as float32), loaded weights-only."""
    try:
        import torch
    except ImportError as err:
        raise ImportError("reading PyTorch checkpoints needs torch: pip install .[torch]") from err
    check_not_empty(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises pickling/zip errors of many types
        # torch's message advises weights_only=False (running the file's pickled code): not repeated here.
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        if reason.startswith("Weights only load failed"):
            reason = "it holds pickled objects other than tensors"
        raise ValueError(f"{path!r} is not a PyTorch state_dict checkpoint (torch.load(weights_only=True): "
                         f"{type(err).__name__}: {reason}); pass the official .pth of the model.") from err
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


def read_npz(path):
    """The arrays of an ``.npz`` (no pickled objects: those would run code)."""
    import zipfile

    check_not_empty(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        what = ("holds pickled objects, not plain arrays" if "pickle" in str(err)
                else f"is not a valid .npz archive ({type(err).__name__}: {str(err).strip()[:120]})")
        raise ValueError(f"{path!r} {what}; pass an .npz of the state_dict's arrays (numpy.savez).") from err


def read_safetensors(path):
    try:
        from safetensors.numpy import load_file
    except ImportError as err:
        raise ImportError("reading .safetensors needs safetensors: pip install .[safetensors]") from err
    check_not_empty(path)
    try:
        return load_file(path)
    except Exception as err:  # noqa: BLE001 - SafetensorError (not a ValueError) and friends
        raise ValueError(f"{path!r} is not a valid .safetensors file ({type(err).__name__}: "
                         f"{str(err).strip()[:120]}); pass the downloaded file (a download may have "
                         "failed).") from err


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
