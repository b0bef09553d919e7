"""``quantize_model``: the RepQ QAT transform of a Keras model."""

import warnings

import keras

from repq.graph import all_layers, copy_layer, flatten_model, single_producer
from repq.layers.base import RepConvBlock
from repq.qat.config import EXCLUDE, LayerBits, QuantizeConfig, annotation, merge
from repq.qat.prepare import prepare_keras_model
from repq.qat.quant_layers import QuantConv2D, QuantCustom, QuantDense, QuantRepConv
from repq.qat.quantizable import is_quantizable, spec_for
from repq.qat.range_placement import with_range_quantizers
from repq.qat.range_quant import RangeFakeQuant
from repq.qat.rules import HIGH_BITS, PrecisionRule
from repq.quantizers import integer_range

BN_MODES = ("repq", "bnest")
# Layers that pass the sign of their input through unchanged.
SIGN_PRESERVING = (keras.layers.MaxPooling2D, keras.layers.GlobalAveragePooling2D,
                   keras.layers.AveragePooling2D, keras.layers.Flatten, keras.layers.Dropout,
                   keras.layers.ZeroPadding2D, keras.layers.Identity)


def _ends_in_relu(layer):
    """Whether ``layer`` applies a ReLU/ReLU6 as its last step."""
    if isinstance(layer, keras.layers.ReLU):
        return True
    activation = layer.get_config().get("activation") if isinstance(layer, keras.layers.Activation) \
        else getattr(layer, "activation", None)
    name = activation if isinstance(activation, str) else getattr(activation, "__name__", "")
    return name in ("relu", "relu6")


def is_non_negative(layer):
    """Whether ``layer``'s output is provably >= 0 (a ReLU, possibly behind pooling/reshapes)."""
    while layer is not None:
        if _ends_in_relu(layer):
            return True
        if not isinstance(layer, SIGN_PRESERVING):
            return False
        layer = single_producer(layer)
    return False


def _with_nested_models_inlined(model):
    """``model`` with nested ``Sequential`` models inlined (their layers become the model's own);
    a nested functional or subclassed model holding layers to quantize raises ValueError."""
    nested = [l for l in model.layers if isinstance(l, keras.Model)
              and any(is_quantizable(inner) for inner in all_layers(l))]
    if not nested:
        return model
    others = [l.name for l in nested if not isinstance(l, keras.Sequential)]
    if others:
        raise ValueError(f"model {model.name!r} nests the models {', '.join(others)} whose layers would be left "
                         "unquantized; rebuild it flat (call their layers on the outer model's tensors) first.")
    return flatten_model(model)


def _warn_float_layers(model, excluded):
    """Warn about layers with weights that stay float: excluded ones, and those without a quantizer
    (e.g. DepthwiseConv2D, a standalone BatchNormalization): integer export refuses them or keeps
    float ops."""
    left = [l for l in model.layers if l.weights and (l.name in excluded or not is_quantizable(l))]
    if left:
        names = ", ".join(f"{l.name} ({'excluded' if l.name in excluded else type(l).__name__})"
                          for l in left[:5])
        more = f" and {len(left) - 5} more" if len(left) > 5 else ""
        warnings.warn(f"quantize_model leaves {len(left)} layer(s) with weights in float: {names}{more}. Only rep "
                      "blocks, Conv2D, Dense and classes registered with repq.register_quantizable are quantized, "
                      "unless excluded; the int8 export refuses the others or keeps them as float ops (its "
                      "report's float_ops lists them).", stacklevel=3)


def _first_and_last(model, excluded):
    quantizable = [l for l in model.layers if is_quantizable(l) and l.name not in excluded]
    if not quantizable:
        left = " left after the exclusions" if excluded else ""
        raise ValueError(f"model {model.name!r} has no conv, rep block or dense layer to quantize{left}.")
    return quantizable[0].name, quantizable[-1].name


def _prepared(model):
    """``(model ready to wrap, names of the layers folded away)``: nested Sequentials inlined and
    :func:`repq.qat.prepare.prepare_keras_model` applied."""
    flat = _with_nested_models_inlined(model)
    prepared = prepare_keras_model(flat)
    return prepared, {l.name for l in flat.layers} - {l.name for l in prepared.layers}


def _layer_choices(model, config, folded=()):
    """``(bits, excluded)``: per-layer :class:`LayerBits` from annotations overridden by ``config``,
    and the names of the layers left float (``folded``: names ``config`` may match that are gone)."""
    bits, excluded = {}, set()
    for layer in model.layers:
        choice = annotation(layer)
        if choice == EXCLUDE:
            excluded.add(layer.name)
        elif choice is not None:
            if not is_quantizable(layer):
                raise ValueError(f"layer {layer.name!r} is annotated with bit widths, but its class "
                                 f"{type(layer).__name__} cannot be quantized; register it with "
                                 "repq.register_quantizable, or annotate it with exclude=True.")
            bits[layer.name] = choice
    if config is not None:
        names = [l.name for l in model.layers]
        config_bits, config_excluded = config.resolve(names, {l.name for l in model.layers if is_quantizable(l)},
                                                      folded)
        excluded |= config_excluded
        bits.update({name: merge(bits.get(name), entry) for name, entry in config_bits.items()})
    return {n: b for n, b in bits.items() if n not in excluded}, excluded


def quantize_model(model, weight_bits=4, act_bits=4, bn="repq", keep_bn=None, rule=None,
                   range_quantizers=True, config=None, bn_variance_floor=False, bnest_padding_aware=None):
    """Return a trainable QAT copy of ``model`` (RepQ).

    Every rep block becomes a :class:`QuantRepConv` (merged kernel -> LSQ
    per-channel fake-quant -> one conv on the LSQ-quantized input); plain
    ``Conv2D`` layers become :class:`QuantConv2D`, ``Dense`` layers
    :class:`QuantDense` and layers of a class registered with
    :func:`repq.register_quantizable` :class:`QuantCustom`. The copy shares no
    variables with ``model``.

    Args:
      model: functional or Sequential Keras model (e.g. from ``repq.models.create_model``).
        Nested ``Sequential`` models are inlined and quantized too; a nested functional model
        with layers to quantize is refused (ValueError). Layers with weights that have no
        quantizer (``DepthwiseConv2D``, a standalone ``BatchNormalization``, ...) stay float,
        named in a UserWarning.
      weight_bits, act_bits: 2..8.
      bn: "repq" (RepQ-BN: branch BNs folded with batch statistics in training)
        or "bnest" (BN estimation from input statistics).
      keep_bn: names of rep blocks that keep true BN under "bnest" (default: the model's
        ``repq.models.model_defaults``, e.g. the ResNet-18s' last two 3x3 convs; none for others).
      rule: a :class:`PrecisionRule` for 8-bit first/last layers (default: the model's
        ``repq.models.model_defaults``: RepVGG only the first layer's input 8-bit, AC-ResNet-18
        the first layer 8-bit, other zoo models and models not from the zoo first and last 8-bit). It
        applies to the first and last layers that are quantized (not excluded).
      config: a :class:`~repq.qat.config.QuantizeConfig` (or a dict ``{"layers": {pattern: bits},
        "exclude": [pattern, ...]}``): per-layer bit widths, which override the rule and
        :func:`repq.quantize_annotate_layer`, and layers left float. A pattern matching no layer
        is a ValueError.
      bn_variance_floor: with ``bn="repq"``: in training, fold each branch BN with ``max(batch
        variance, moving variance)`` instead of the batch variance, and update the moving variance
        (which then never decreases) with it: a shrinking signal cannot inflate a branch's folded
        kernel above its moving-statistics fold. False (the default): RepQ-BN as specified, which can
        start at chance below 4 bits in deep BN nets (docs/training.md, "RepQ-BN below 4 bits").
      bnest_padding_aware: with ``bn="bnest"``: True/False sets whether the BNEst blocks estimate with
        the zero padding counted (:class:`repq.layers.base.RepConvBlock`); None (the default) keeps each
        block's own setting (False unless the FP model was built with it).
    """
    from repq.checks import check_built_model, check_not_quantized
    from repq.models import model_defaults

    check_built_model(model)
    check_not_quantized(model, fix="quantize_model takes the floating-point model (the QAT model is already "
                        "trainable; repq.reparametrize it for deployment)")
    integer_range(weight_bits, True, "weight_bits")
    integer_range(act_bits, False, "act_bits")
    if bn not in BN_MODES:
        raise ValueError(f"Invalid value for argument bn. Expected one of {BN_MODES}. Received: bn={bn!r}")
    if bn_variance_floor and bn != "repq":
        raise ValueError(f"bn_variance_floor applies to RepQ-BN (bn='repq'); it is not defined for bn={bn!r}.")
    if bnest_padding_aware is not None and bn != "bnest":
        raise ValueError(f"bnest_padding_aware applies to BN estimation (bn='bnest'); it is not defined for bn={bn!r}.")
    rule = model_defaults(model).precision_rule if rule is None else rule
    if not isinstance(rule, PrecisionRule):
        raise TypeError(f"Invalid value for argument rule. Expected a PrecisionRule. Received: rule={rule!r} "
                        f"(of type {type(rule).__name__})")
    if isinstance(config, dict):
        config = QuantizeConfig.from_dict(config)
    if config is not None and not isinstance(config, QuantizeConfig):
        raise TypeError(f"Invalid value for argument config. Expected a repq.QuantizeConfig or a dict. "
                        f"Received: config={config!r} (of type {type(config).__name__})")
    if keep_bn is None:
        keep_bn = model_defaults(model).keep_bn if bn == "bnest" else ()
    keep_bn = set(keep_bn)
    model, folded = _prepared(model)
    chosen, excluded = _layer_choices(model, config, folded)
    _warn_float_layers(model, excluded)
    first, last = _first_and_last(model, excluded)

    def bits_for(layer):
        w_bits, a_bits = weight_bits, act_bits
        if layer.name == first:
            w_bits = HIGH_BITS if rule.first_weight else w_bits
            a_bits = HIGH_BITS if rule.first_input else a_bits
        if layer.name == last:
            w_bits = HIGH_BITS if rule.last_weight else w_bits
            a_bits = HIGH_BITS if rule.last_input else a_bits
        choice = merge(LayerBits(w_bits, a_bits), chosen.get(layer.name))
        return choice.weight_bits, choice.act_bits

    def clone(layer):
        if not is_quantizable(layer) or layer.name in excluded:
            return copy_layer(layer)
        w_bits, a_bits = bits_for(layer)
        signed = not is_non_negative(single_producer(layer))
        inner = copy_layer(layer)
        if spec_for(layer) is not None:
            return QuantCustom(inner, w_bits, a_bits, signed, name=layer.name)
        if isinstance(layer, RepConvBlock):
            if bn == "bnest" and layer.name not in keep_bn:
                inner.norm_mode = "bnest"
                if bnest_padding_aware is not None:
                    inner.bnest_padding_aware = bool(bnest_padding_aware)
            elif bn == "repq":
                inner.norm_mode, inner.bnest_padding_aware = "bn", False
            return QuantRepConv(inner, w_bits, a_bits, signed, bn_variance_floor=bn_variance_floor, name=layer.name)
        wrapper = QuantDense if isinstance(layer, keras.layers.Dense) else QuantConv2D
        return wrapper(inner, w_bits, a_bits, signed, name=layer.name)

    try:
        qat = keras.models.clone_model(model, clone_function=clone)
    except ValueError as err:
        if "Functional" in str(err) or "Sequential" in str(err):
            raise TypeError("quantize_model needs a functional or Sequential model; build it with the "
                            "functional API.") from err
        raise
    return with_range_quantizers(qat, mode="qat")[0] if range_quantizers else qat


def check_config(model, config):
    """Raise ValueError unless ``config`` (a :class:`QuantizeConfig`) fits ``model``: every pattern
    names a layer, and layers given bits can be quantized (what ``quantize_model`` would check)."""
    prepared, folded = _prepared(model)
    _layer_choices(prepared, config, folded)


def quantized_layers(model):
    """The QAT wrappers of a model from :func:`quantize_model`, in layer order."""
    from repq.qat.quant_layers import QuantWrapper
    return [l for l in all_layers(model) if isinstance(l, QuantWrapper)]


def range_quantizers(model):
    """The :class:`~repq.qat.range_quant.RangeFakeQuant` layers of ``model``, in layer order."""
    return [l for l in all_layers(model) if isinstance(l, RangeFakeQuant)]
