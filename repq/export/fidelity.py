"""Fidelity of an integer .tflite against the Keras QAT model, written as JSON + Markdown.

Units: output differences are in output quantization steps (the int8 scale of
the TFLite model output); PSNR in dB on the Y channel (``repq.metrics.psnr_y``).
"""

import json
import math

import numpy as np

from repq.export import tflite_graph
from repq.export.graph import container_factor
from repq.export.integer_emulation import quantize_float
from repq.metrics import psnr_y
from repq.outputs import atomic_file
from repq.quantizers import integer_range


def run_tflite(it, x):
    """Run ``it`` image by image on float ``x`` (N, H, W, C) -> float outputs (N, ...).

    An int8 input gets the integers ``repq.integer_predict`` starts from
    (``integer_emulation.quantize_float``, in float64), so both compute from the same input.
    """
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    results = []
    for image in x:
        image = image[None].astype(np.float32)
        if inp["dtype"] == np.int8:
            image = np.clip(quantize_float(image, s_in, z_in), -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], image)
        it.invoke()
        y = it.get_tensor(out["index"])
        results.append((y.astype(np.float32) - z_out) * s_out if out["dtype"] == np.int8 else y)
    return np.concatenate(results)


def _input_scale_ok(in_scale, layer):
    """The conv's int8 input scale is the learned step, or the step / ``2^(8-bits)`` of the
    finer container (``repq.export.graph.fine_container``)."""
    step = float(layer.input_step.numpy())
    return any(bool(np.allclose(in_scale, step / f, rtol=1e-6)) for f in {1, container_factor(layer)})


def check_graph(it, layers):
    """Per-conv checks against the quantized Keras layers (matched by their learned weight steps).

    Returns ``{all_convs_integer, weights_on_grid, scales_match_learned, convs: [...]}``.
    """
    rows = []
    for conv in tflite_graph.conv_ops(it):
        w_scales = tflite_graph.scales(conv["weight"])
        match = [l for l in layers if l.weight_step.shape[0] == w_scales.size
                 and np.allclose(l.weight_step.numpy(), w_scales, rtol=1e-6, atol=0)]
        ints = tflite_graph.weight_integers(it, conv)
        row = dict(name=conv["name"][:80], op=conv["op"], integer=tflite_graph.is_integer_conv(conv),
                   weight_min=int(ints.min()), weight_max=int(ints.max()), layer=None)
        if match:
            layer = match[0]
            qmin, qmax = integer_range(layer.weight_bits, True)
            in_scale = tflite_graph.scales(conv["input"])
            row.update(layer=layer.name, weight_bits=layer.weight_bits,
                       on_grid=bool(qmin <= ints.min() and ints.max() <= qmax),
                       input_container=None if layer.act_bits is None else int(round(
                           float(layer.input_step.numpy()) / float(in_scale[0]))),
                       input_scale_learned=layer.act_bits is None or bool(
                           _input_scale_ok(in_scale, layer)))
        rows.append(row)
    matched = [r for r in rows if r["layer"]]
    return dict(all_convs_integer=all(r["integer"] for r in rows),
                weights_on_grid=bool(matched) and all(r["on_grid"] for r in matched),
                scales_match_learned=len(matched) == len(layers) and all(r["input_scale_learned"] for r in matched),
                num_convs=len(rows), num_matched=len(matched), convs=rows)


def compare(reference, tflite_out, out_step, labels=None, scale=None, hr=None):
    """Numbers comparing Keras ``reference`` and TFLite outputs (both float, same shape)."""
    diff = np.abs(reference - tflite_out) / out_step
    report = dict(num_images=int(len(reference)), output_step=float(out_step),
                  max_abs_diff_steps=float(diff.max()), mean_abs_diff_steps=float(diff.mean()))
    if scale is None:
        ref_top, tfl_top = reference.argmax(-1), tflite_out.argmax(-1)
        report["top1_agreement"] = float((ref_top == tfl_top).mean())
        if labels is not None:
            report["accuracy_keras"] = float((ref_top == labels).mean())
            report["accuracy_tflite"] = float((tfl_top == labels).mean())
    elif hr is not None:
        report["psnr_keras"] = float(np.mean(psnr_y(reference, hr, scale)))
        report["psnr_tflite"] = float(np.mean(psnr_y(tflite_out, hr, scale)))
    return report


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def write_report(report, stem):
    """Write ``stem.json`` and ``stem.md`` (``repq.outputs.atomic_file``); returns the two paths."""
    _write_text(stem + ".json", json.dumps(report, indent=2))
    lines = [f"# TFLite fidelity: {report.get('model', '')}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report.items() if not isinstance(v, (list, dict))]
    sections = {"integer_emulation": "The QAT model computed in integers (`repq.integer_predict`: the runtime's "
                                     "requantization arithmetic on the learned steps) against the TFLite model:",
                "builtin_kernels": "TFLite's builtin (reference) int8 kernels instead of the default runtime "
                                   "(their fixed-point requantization rounds differently, see docs/export.md):"}
    for key, title in sections.items():
        if report.get(key):
            lines += ["", title, "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in report[key].items()]
    convs = report.get("graph", {}).get("convs", [])
    if convs:
        lines += ["", "| conv | op | integer | weight bits | int range | on grid | input scale = learned "
                  "| step / input scale |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {c['layer'] or c['name']} | {c['op']} | {c['integer']} | {c.get('weight_bits', '')} | "
                  f"[{c['weight_min']}, {c['weight_max']}] | {c.get('on_grid', '')} | "
                  f"{c.get('input_scale_learned', '')} | {c.get('input_container') or ''} |" for c in convs]
    _write_text(stem + ".md", "\n".join(lines) + "\n")
    return stem + ".json", stem + ".md"


def _write_text(path, text):
    """Write ``text`` to ``path`` atomically (an ordinary file mode; never into a special file)."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_file(path, write)
