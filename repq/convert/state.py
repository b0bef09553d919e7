"""Reading a PyTorch state_dict key by key, with every mismatch collected.

A :class:`StateDictReader` hands out arrays (PyTorch layout) to the layer
loaders, records which keys were used, which were missing, mis-shaped or not
equal to a fixed buffer, and queues the Keras variable updates. Nothing is
assigned until :meth:`StateDictReader.commit`, which raises one ``ValueError``
listing every problem, so a bad checkpoint never leaves a half-loaded model.
"""

import warnings

import numpy as np


class Scope:
    """Maps a layer's own key (``"bn.weight"``) to the network key.

    ``Scope("stage1.0")`` prefixes every key; ``heads={"bn": "layer1.0.bn1"}``
    redirects keys by their first component (torchvision keeps a block's conv
    and BN as siblings, e.g. ``layer1.0.conv1`` / ``layer1.0.bn1``).
    """

    def __init__(self, prefix="", heads=None):
        self.prefix = f"{prefix}." if prefix else ""
        self.heads = heads or {}

    def __call__(self, key):
        head, _, rest = key.partition(".")
        if head in self.heads:
            return f"{self.heads[head]}.{rest}" if rest else self.heads[head]
        return self.prefix + key


class StateDictReader:
    """Collects reads from ``state_dict`` and the Keras updates they produce."""

    def __init__(self, state_dict):
        self.state = {key: np.asarray(value) for key, value in state_dict.items()}
        self.used = set()
        self.missing = []
        self.mismatched = []
        self.invalid = []
        self.updates = []

    def scoped(self, scope):
        return ScopedReader(self, scope)

    def has(self, key):
        return key in self.state

    def shape(self, key):
        return self.state[key].shape if key in self.state else None

    def get(self, key, shape, optional=False):
        """The array at ``key`` (PyTorch layout), or None if missing or not of ``shape``."""
        if key not in self.state:
            if not optional:
                self.missing.append(key)
            return None
        self.used.add(key)
        value = self.state[key]
        if value.shape != tuple(shape):
            self.mismatched.append(f"{key} (expected {tuple(shape)}, got {value.shape})")
            return None
        return value

    def put(self, variable, key, shape, to_keras=None):
        """Queue ``variable <- to_keras(state[key])``; ``shape`` is the PyTorch shape."""
        value = self.get(key, shape)
        if value is not None:
            self.set(variable, value if to_keras is None else to_keras(value))

    def set(self, variable, value):
        """Queue ``variable <- value`` (Keras layout, same shape)."""
        self.updates.append((variable, np.asarray(value, np.float32)))

    def check(self, key, expected, what):
        """Verify an optional fixed buffer (a mask, an identity) equals ``expected``."""
        value = self.get(key, np.shape(expected), optional=True)
        if value is not None and not np.allclose(value, expected, atol=1e-6):
            self.invalid.append(f"{key} (not the fixed {what})")

    def warn_if_differs(self, key, expected, what):
        """Warn (only) when a loaded buffer differs from its formula."""
        value = self.state.get(key)
        if value is not None and value.shape == np.shape(expected) and not np.allclose(value, expected, atol=1e-5):
            warnings.warn(f"{key} differs from the {what}; loading the checkpoint's values.")

    def commit(self, target, strict=True):
        """Raise one ``ValueError`` for all problems, else assign every queued update.

        With ``strict=False`` unknown and missing keys are tolerated (as in
        ``torch.nn.Module.load_state_dict``); mis-shaped or invalid keys never are.
        """
        problems = []
        unknown = sorted(set(self.state) - self.used)
        lists = (("mis-shaped", self.mismatched), ("invalid", self.invalid))
        if strict:
            lists = (("unknown", unknown), ("missing", self.missing)) + lists
        for kind, keys in lists:
            if keys:
                problems.append(f"{len(keys)} {kind} key{'s' if len(keys) > 1 else ''}: {shortlist(keys)}")
        if problems:
            raise ValueError(f"state_dict does not match {target}: {'; '.join(problems)}.")
        for variable, value in self.updates:
            variable.assign(value)


def shortlist(keys, first=5):
    """The first ``first`` keys and how many more: a wrong-architecture state_dict stays one short line."""
    keys = list(keys)
    more = f", ... ({len(keys) - first} more)" if len(keys) > first else ""
    return ", ".join(str(key) for key in keys[:first]) + more


class ScopedReader:
    """A view of a :class:`StateDictReader` whose keys go through a :class:`Scope`."""

    def __init__(self, reader, scope):
        self.reader = reader
        self.scope = scope

    def has(self, key):
        return self.reader.has(self.scope(key))

    def shape(self, key):
        return self.reader.shape(self.scope(key))

    def get(self, key, shape, optional=False):
        return self.reader.get(self.scope(key), shape, optional)

    def put(self, variable, key, shape, to_keras=None):
        self.reader.put(variable, self.scope(key), shape, to_keras)

    def set(self, variable, value):
        self.reader.set(variable, value)

    def check(self, key, expected, what):
        self.reader.check(self.scope(key), expected, what)

    def warn_if_differs(self, key, expected, what):
        self.reader.warn_if_differs(self.scope(key), expected, what)

    def sub(self, prefix):
        """A view one module deeper: keys become ``prefix.key``."""
        return ScopedReader(self.reader, lambda key: self.scope(f"{prefix}.{key}"))
