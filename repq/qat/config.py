"""``QuantizeConfig``: per-layer bit widths (mixed precision) and exclusions for ``quantize_model``.

Layers are named by a pattern: a string is a glob (``fnmatch``: ``"stage4_*"``; a plain layer
name matches itself), a compiled ``re.Pattern`` must match the whole name. When several
entries match a layer, later entries override earlier ones for the fields they set.
"""

import dataclasses
import fnmatch
import re

import keras

from repq.quantizers import integer_range

EXCLUDE = "exclude"  # the annotation of a layer left float
_ANNOTATION = "_repq_quantize"


@dataclasses.dataclass(frozen=True)
class LayerBits:
    """Bit widths of one layer; None keeps the model-wide value (or the precision rule's)."""

    weight_bits: int | None = None
    act_bits: int | None = None

    def __post_init__(self):
        for name in ("weight_bits", "act_bits"):
            if getattr(self, name) is not None:
                integer_range(getattr(self, name), True, argument=name)


def layer_bits(value, argument="bits"):
    """``value`` as :class:`LayerBits`: an int (weights and input), a ``(weight_bits, act_bits)``
    pair, a dict with those keys, or a LayerBits."""
    if isinstance(value, LayerBits):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return LayerBits(value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return LayerBits(*value)
    if isinstance(value, dict) and set(value) <= {"weight_bits", "act_bits"}:
        return LayerBits(**value)
    raise ValueError(f"Invalid value for argument {argument}. Expected an integer, a (weight_bits, act_bits) "
                     f"pair or a dict with those keys. Received: {argument}={value!r}")


def _describe(pattern):
    return f"re.compile({pattern.pattern!r})" if isinstance(pattern, re.Pattern) else repr(pattern)


def matches(pattern, name):
    """Whether the glob string or ``re.Pattern`` ``pattern`` names layer ``name``."""
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(name) is not None
    return fnmatch.fnmatchcase(name, pattern)


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """Per-layer choices for :func:`repq.quantize_model`.

    Args:
      layers: mapping pattern -> bits (an int for weights and input, a ``(weight_bits, act_bits)``
        pair, a dict or a :class:`LayerBits`). Overrides the first/last-layer precision rule and
        :func:`repq.quantize_annotate_layer` for the layers it names.
      exclude: patterns of layers left in float (named in quantize_model's float-layer warning).
    """

    layers: dict = dataclasses.field(default_factory=dict)
    exclude: tuple = ()

    def __post_init__(self):
        if not hasattr(self.layers, "items"):
            raise TypeError(f"Invalid value for argument layers. Expected a mapping pattern -> bits. "
                            f"Received: layers={self.layers!r}")
        exclude = (self.exclude,) if isinstance(self.exclude, (str, re.Pattern)) else tuple(self.exclude)
        for pattern in [*self.layers, *exclude]:
            if not isinstance(pattern, (str, re.Pattern)):
                raise TypeError(f"Invalid layer pattern {pattern!r}. Expected a layer name, a glob string or "
                                "a compiled re.Pattern.")
        layers = {p: layer_bits(v, argument=f"layers[{_describe(p)}]") for p, v in self.layers.items()}
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "exclude", exclude)

    @classmethod
    def from_dict(cls, config):
        """From a plain dict ``{"layers": {...}, "exclude": [...]}`` (e.g. a recipe's ``quantize`` field)."""
        unknown = set(config) - {"layers", "exclude"}
        if unknown:
            raise ValueError(f"Invalid value for argument config. Unknown keys {sorted(unknown)}; expected "
                             "'layers' and 'exclude'.")
        return cls(dict(config.get("layers", {})), tuple(config.get("exclude", ())))

    def resolve(self, names, quantizable, folded=()):
        """``(bits, excluded)`` for a model's layers: ``bits`` maps the names of quantizable
        layers an entry matches to their :class:`LayerBits`, ``excluded`` is a set of names.

        Args:
          names: every layer name of the model.
          quantizable: the names of the layers ``quantize_model`` can quantize.
          folded: names of layers ``quantize_model`` folded into the layer before them (a BatchNormalization,
            ZeroPadding2D or ReLU after a conv: ``repq.qat.prepare``); patterns may name them, but not give them bits.

        An excluded layer stays float even where an entry of ``layers`` matches it.
        Raises ValueError naming a pattern that matches no layer, or a layer given bits that
        cannot be quantized.
        """
        names = list(names) + [n for n in folded if n not in names]
        excluded = set()
        for pattern in self.exclude:
            hit = [n for n in names if matches(pattern, n)]
            if not hit:
                raise ValueError(f"QuantizeConfig.exclude names {_describe(pattern)}, which matches no layer of "
                                 f"the model (layers: {_preview(names)}).")
            excluded.update(hit)
        bits = {}
        for pattern, entry in self.layers.items():
            hit = [n for n in names if matches(pattern, n)]
            if not hit:
                raise ValueError(f"QuantizeConfig.layers names {_describe(pattern)}, which matches no layer of "
                                 f"the model (layers: {_preview(names)}).")
            targets = [n for n in hit if n in quantizable]
            if not targets and set(hit) <= set(folded):
                raise ValueError(f"QuantizeConfig.layers names {_describe(pattern)}, which matches only layers "
                                 f"folded into the conv or dense before them ({_preview(hit)}); give the bits to "
                                 "that layer.")
            if not targets:
                raise ValueError(f"QuantizeConfig.layers names {_describe(pattern)}, which matches only layers "
                                 f"that cannot be quantized ({_preview(hit)}); register their class with "
                                 "repq.register_quantizable, or exclude them.")
            for name in targets:
                bits[name] = merge(bits.get(name), entry)
        return {n: b for n, b in bits.items() if n not in excluded}, excluded


def merge(base, override):
    """``override``'s fields where set, else ``base``'s (either may be None)."""
    if base is None or override is None:
        return override or base
    return LayerBits(override.weight_bits if override.weight_bits is not None else base.weight_bits,
                     override.act_bits if override.act_bits is not None else base.act_bits)


def _preview(names, limit=8):
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def quantize_annotate_layer(layer, weight_bits=None, act_bits=None, exclude=False):
    """Record ``layer``'s bit widths (or, with ``exclude=True``, that it stays float) for
    :func:`repq.quantize_model`; returns ``layer``, so it can wrap a layer where it is created.

    None keeps the model-wide value. A :class:`QuantizeConfig` entry naming the layer overrides
    the annotation. The annotation lives on the layer object: it is not saved with the model.
    """
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(f"Invalid value for argument layer. Expected a keras.layers.Layer. "
                        f"Received: layer={layer!r} (of type {type(layer).__name__})")
    if exclude and (weight_bits is not None or act_bits is not None):
        raise ValueError(f"Invalid value for argument exclude. An excluded layer has no bit widths. "
                         f"Received: exclude=True with weight_bits={weight_bits}, act_bits={act_bits}")
    setattr(layer, _ANNOTATION, EXCLUDE if exclude else LayerBits(weight_bits, act_bits))
    return layer


def annotation(layer):
    """The :func:`quantize_annotate_layer` choice of ``layer``: LayerBits, EXCLUDE, or None."""
    return getattr(layer, _ANNOTATION, None)


def copy_annotation(source, target):
    """Give ``target`` (a copy of ``source``) the annotation of ``source``, if any."""
    if annotation(source) is not None:
        setattr(target, _ANNOTATION, annotation(source))
