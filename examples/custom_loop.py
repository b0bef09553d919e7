"""RepQ in a custom ``tf.GradientTape`` training loop (no ``model.fit``).

  python examples/custom_loop.py [--steps 20] [--bits 4]

1. build a multi-branch RepVGG-A0 for mnist5k's 32x32 digits (here untrained, to keep
   the example short; start from a trained FP model in practice),
2. ``repq.qat.quantize_model``: every rep block merges its branches in each step and
   runs ONE fake-quantized conv,
3. initialise the LSQ steps from one batch (``repq.callbacks.initialize_step_sizes``),
4. train with a ``tf.function`` step and the recipe's optimizer (step sizes get their
   own LR, :class:`repq.training.GroupedSGD`),
5. ``repq.reparametrize``: the deploy model, equal to the QAT model in inference.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from repq import models  # noqa: E402
import repq  # noqa: E402
from repq.configs import repvgg_a0  # noqa: E402
from repq.callbacks import initialize_step_sizes  # noqa: E402
from repq.data import get_dataset  # noqa: E402
from repq.qat import quantize_model  # noqa: E402
from repq.training import build_loss, build_optimizer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--bits", type=int, default=4)
    args = parser.parse_args()

    recipe = repvgg_a0.get_config()
    train, info = get_dataset("mnist5k", "train", recipe.batch_size)
    fp = models.create_model("repvgg_a0", num_classes=info.num_classes, input_shape=info.image_shape)
    qat = quantize_model(fp, args.bits, args.bits)
    initialize_step_sizes(qat, train)
    optimizer = build_optimizer(recipe, "qat", steps_per_epoch=args.steps, epochs=1, weight_bits=args.bits)
    loss_fn = build_loss(recipe)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, qat(x, training=True))  # merged kernel from the live branches
        grads = tape.gradient(loss, qat.trainable_variables)
        optimizer.apply(grads, qat.trainable_variables)
        return loss

    for step, (x, y) in enumerate(train.repeat().take(args.steps)):
        loss = train_step(x, y)
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {float(loss):.4f}")

    deploy = repq.reparametrize(qat)
    x, _ = next(iter(train))
    diff = np.abs(deploy(x).numpy() - qat(x, training=False).numpy()).max()
    print(f"deploy vs QAT max |diff| = {diff:.3g}")


if __name__ == "__main__":
    main()
