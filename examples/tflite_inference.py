"""Classify raw digits with an exported integer .tflite on LiteRT, as a deployment would.

  python examples/tflite_inference.py [--tflite EXPORT_DIR/model_int8.tflite] [--images 20]

1. The model: ``--tflite``, a .tflite written by export.py for an mnist5k classifier
   (``model_int8.tflite``; a ``--float_io`` export works too). Without it, a tiny RepVGG-style
   classifier is trained for a few seconds (``--steps`` batches), quantized to W8A8 (``repq.quantize_model``),
   calibrated and exported with ``repq.export_tflite`` into a temporary folder.
2. Raw uint8 test digits (``repq.data.mnist5k.pixels``; the test split is class-interleaved, so
   the first N span the classes) are normalised as in training, ``x = (p / 255 - mean) / std``,
   and quantized with the input scale ``s`` and zero point ``z`` stored in the .tflite (read from
   ``interpreter.get_input_details()``): ``q = clip(floor(x / s + 0.5) + z, -128, 127)``.
3. ``ai_edge_litert.interpreter.Interpreter`` runs them one by one; the int8 logits are
   dequantized with the output scale and zero point, ``(q - z) * s``, and the top-1 accuracy and
   the classes covered are printed.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from repq.cli_env import setup  # noqa: E402  (quiet TensorFlow import)

setup()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

import repq  # noqa: E402
from repq.data import calibration_batches, common, get_dataset, mnist5k  # noqa: E402
from repq.layers import RepVGGBlock  # noqa: E402

MEAN, STD = (np.array(v, np.float32) for v in common.MNIST_MEAN_STD)


def tiny_tflite(path, steps):
    """Train a 3-block RepVGG-style classifier for ``steps`` batches, quantize it (W8A8), export to ``path``."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for filters in (16, 32, 32):
        x = RepVGGBlock(filters, strides=2)(x)  # 32 -> 16 -> 8 -> 4
    fp = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x)))
    fp.compile(optimizer=keras.optimizers.Adam(3e-3),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train, _ = get_dataset("mnist5k", "train", 64, augment=False)
    fp.fit(train.repeat().take(steps), epochs=1, verbose=0)
    qat = repq.quantize_model(fp, 8, 8)
    calib = calibration_batches("mnist5k", 64, 32)
    repq.calibrate(qat, calib[0])
    repq.export_tflite(qat, path, calib)  # + a fidelity report next to it
    return path


def quantize_input(x, details):
    """Float model inputs -> the interpreter's input dtype, with its stored scale and zero point (rounded in
    float64, as ``repq.integer_predict`` rounds them: the integer model's outputs are then the same)."""
    if details["dtype"] == np.float32:  # a --float_io export
        return x
    scale, zero_point = details["quantization"]
    info = np.iinfo(details["dtype"])
    q = np.floor(np.asarray(x, np.float64) / scale + 0.5) + zero_point
    return np.clip(q, info.min, info.max).astype(details["dtype"])


def dequantize_output(y, details):
    scale, zero_point = details["quantization"]
    return y.astype(np.float32) if details["dtype"] == np.float32 else (y.astype(np.float32) - zero_point) * scale


def classify(tflite_path, pixels):
    """Top-1 classes of uint8 digits ``pixels`` (N, 32, 32, 3) by the .tflite at ``tflite_path``."""
    try:
        interpreter = Interpreter(model_path=tflite_path)
    except ValueError as err:  # not a .tflite flatbuffer
        sys.exit(f"error: {tflite_path}: {err}")
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    if tuple(inp["shape"][1:]) != pixels.shape[1:] or tuple(out["shape"][1:]) != (10,):
        sys.exit(f"error: {tflite_path} takes {tuple(inp['shape'][1:])} and gives {tuple(out['shape'][1:])}; "
                 "this example needs an mnist5k classifier (32x32x3 digits -> 10 logits).")
    scale, zero_point = inp["quantization"]
    print(f"input: {np.dtype(inp['dtype']).name}, scale {scale:.6g}, zero point {zero_point}")
    predicted = []
    for image in pixels:
        x = (image.astype(np.float32) / 255.0 - MEAN) / STD  # the training normalisation
        interpreter.set_tensor(inp["index"], quantize_input(x[None], inp))
        interpreter.invoke()
        logits = dequantize_output(interpreter.get_tensor(out["index"]), out)
        predicted.append(int(logits.argmax()))
    return np.array(predicted)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflite", default=None, help="a .tflite written by export.py (default: export a tiny model)")
    parser.add_argument("--images", type=int, default=20, help="test digits to classify (1..1000)")
    parser.add_argument("--steps", type=int, default=120, help="training batches of the tiny model (without --tflite)")
    args = parser.parse_args()
    if not 1 <= args.images <= 1000:
        parser.error("--images must be in 1..1000")
    if args.tflite and not os.path.isfile(args.tflite):
        parser.error(f"--tflite {args.tflite!r} is not a file")
    pixels, labels = mnist5k.pixels("test")
    pixels, labels = pixels[:args.images], labels[:args.images]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.tflite or tiny_tflite(os.path.join(tmp, "tiny_int8.tflite"), args.steps)
        predicted = classify(path, pixels)
    print(f"labels:    {' '.join(map(str, labels))}")
    print(f"predicted: {' '.join(map(str, predicted))}")
    covered = np.unique(labels)
    print(f"accuracy: {100 * np.mean(predicted == labels):.1f} % on {len(labels)} test digits covering "
          f"{len(covered)} of 10 classes ({', '.join(map(str, covered))})")


if __name__ == "__main__":
    main()
