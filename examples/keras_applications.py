"""Quantize a keras.applications model with RepQ's QAT, train it, and deploy it as an integer TFLite model.

  python examples/keras_applications.py [--model MobileNetV2|ResNet50] [--bits 4] [--steps 20]

1. ``keras.applications.MobileNetV2`` (width 0.35) or ``ResNet50`` for mnist5k's 32x32 digits, weights
   None (nothing is downloaded), trained in float for ``--fp_steps`` steps;
2. ``repq.quantize_model``: its DepthwiseConv2D layers become grouped convs, each ZeroPadding2D becomes
   its conv's padding, each BatchNormalization after a conv is folded into it (moving statistics) and each
   ReLU/ReLU6 after a conv becomes the conv's activation (``repq.qat.prepare``); every conv and dense is
   then fake-quantized with learned per-channel steps;
3. ``--steps`` QAT steps with Keras ``fit``;
4. ``repq.export_tflite``: int8 TFLite on LiteRT, equal bit for bit to ``repq.integer_predict``.
A few hundred steps are needed for a useful accuracy; the defaults only show the path (~3 min on 2 cores).
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

import repq  # noqa: E402
from repq.data import get_dataset  # noqa: E402

MODELS = {
    "MobileNetV2": lambda: keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10,
                                                         alpha=0.35, classifier_activation=None),
    "ResNet50": lambda: keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10,
                                                    classifier_activation=None),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="MobileNetV2")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--fp_steps", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20, help="QAT steps")
    args = parser.parse_args()
    train, _ = get_dataset("mnist5k", "train", 32)
    test, _ = get_dataset("mnist5k", "test", 100, limit=200)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    fp = MODELS[args.model]()
    fp.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"])
    fp.fit(train.repeat(), steps_per_epoch=args.fp_steps, epochs=1, verbose=2)
    print(f"FP {args.model}: top-1 {100 * fp.evaluate(test, verbose=0)[1]:.1f} % on 200 test digits")

    qat = repq.quantize_model(fp, args.bits, args.bits)
    calibration = [x.numpy() for x, _ in train.take(2)]
    repq.calibrate(qat, np.concatenate(calibration))
    qat.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"])
    qat.fit(train.repeat(), steps_per_epoch=args.steps, epochs=1, verbose=2)
    print(f"W{args.bits}A{args.bits} QAT: top-1 {100 * qat.evaluate(test, verbose=0)[1]:.1f} %")

    with tempfile.TemporaryDirectory() as tmp:
        path, report = repq.export_tflite(qat, os.path.join(tmp, "model.tflite"), calibration, test)
        print(f"int8 TFLite: {report['size_bytes'] / 1024:.0f} KiB, ops {', '.join(report['ops'])}, "
              f"integer only: {report['integer_only']}")
        print(f"LiteRT top-1 {100 * report['accuracy_tflite']:.1f} % vs QAT model: agreement "
              f"{100 * report['top1_agreement']:.1f} %; repq.integer_predict equals LiteRT on "
              f"{100 * report['integer_emulation']['bit_exact_fraction']:.0f} % of outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
