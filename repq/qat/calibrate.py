"""Data-driven initialisation of every quantizer's step (LSQ init) from a sample batch."""

from repq.qat.transform import quantized_layers, range_quantizers


def calibrate(model, batch):
    """Initialise each not-yet-initialised step (and 8-bit tensor range) of ``model`` from ``batch``.

    Runs one eager forward pass in inference mode (moving BN statistics are
    untouched). Call it before ``fit``, in particular under a multi-replica
    ``tf.distribute`` strategy, where the training step never writes steps.
    Returns ``model``.
    """
    from repq.checks import check_built_model

    check_built_model(model)
    quantizers = []
    for wrapper in quantized_layers(model):
        quantizers.append(wrapper.weight_quantizer)
        if wrapper.input_quantizer is not None:
            quantizers.append(wrapper.input_quantizer)
    quantizers += range_quantizers(model)
    if not quantizers:
        raise ValueError(f"model {model.name!r} has no quantizers; create it with repq.quantize_model.")
    for q in quantizers:
        q.calibrating = True
    try:
        model(batch, training=False)
    finally:
        for q in quantizers:
            q.calibrating = False
    return model
