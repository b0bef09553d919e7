"""Evaluate the deployed integer model in Python, bit-exactly, and check it against LiteRT.

  python examples/integer_inference.py [--bits 4] [--images 64] [--checkpoint RUN_DIR/qat_model.keras]

1. a QAT AC-ResNet-18 for mnist5k's 32x32 digits (untrained and calibrated on one batch, to
   keep the example short; pass ``--checkpoint`` for a model trained by train.py),
2. ``repq.integer_predict``: its outputs computed in integers with the rounding rules of
   LiteRT's default CPU runtime (no conversion),
3. ``repq.export_tflite``: the int8 .tflite, run on LiteRT; its outputs are the same
   integers, while the float-simulated QAT model differs from both by a few output steps
   wherever a rounding near-tie flipped.
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

from repq import models  # noqa: E402
import repq  # noqa: E402
from repq.data import get_dataset  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--checkpoint", default=None, help="a QAT .keras file written by train.py")
    args = parser.parse_args()
    test, _ = get_dataset("mnist5k", "test", args.images, limit=args.images)
    x, labels = (t.numpy() for t in next(iter(test)))
    if args.checkpoint:
        qat = keras.saving.load_model(args.checkpoint)
    else:
        fp = models.create_model("ac_resnet18", num_classes=10, input_shape=x.shape[1:])
        qat = repq.quantize_model(fp, args.bits, args.bits)
        repq.calibrate(qat, x)

    integer = repq.integer_predict(qat, x)
    with tempfile.TemporaryDirectory() as tmp:
        _, report = repq.export_tflite(qat, os.path.join(tmp, "model.tflite"), [x], [(x, labels)])
    emulated = report["integer_emulation"]
    print(f"{len(labels)} test digits (the first of the test split, stored class-interleaved) "
          f"covering {len(np.unique(labels))} of 10 classes")
    print(f"integer model top-1 (Python): {100 * np.mean(integer.argmax(-1) == labels):.1f} %, "
          f"TFLite top-1: {100 * report['accuracy_tflite']:.1f} %")
    print(f"TFLite vs integer_predict: max {emulated['max_abs_diff_steps']:.0f} output steps, "
          f"{100 * emulated['bit_exact_fraction']:.1f} % of outputs identical")
    print(f"TFLite vs float-simulated QAT: max {report['max_abs_diff_steps']:.0f} output steps")


if __name__ == "__main__":
    main()
