"""Parameter counts of every zoo model, multi-branch (training) vs deploy, measured by the code.

Usage: python benchmarks/model_params.py  ->  benchmarks/results/model_params.{json,md}
Counts are trainable parameters (BN moving statistics excluded) at ImageNet
shapes (224x224x3, 1000 classes); ECBSR at any size (fully convolutional).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.provenance import markdown_header, provenance  # noqa: E402
from repq import models  # noqa: E402
import repq  # noqa: E402
from repq.training.artifacts import write_json, write_text  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def trainable_count(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_weights))


def main():
    rows = []
    for name in models.list_models():
        if name.startswith("ecbsr"):
            model = models.create_model(name)
        else:
            model = models.create_model(name, num_classes=1000, input_shape=(224, 224, 3))
        rows.append({"model": name, "train_params": trainable_count(model),
                     "deploy_params": trainable_count(repq.reparametrize(model))})
    info = provenance()
    write_json(os.path.join(RESULTS, "model_params.json"), dict(provenance=info, rows=rows))
    lines = [markdown_header(info), "| model | training-time params | deploy params |", "|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['train_params']:,} | {r['deploy_params']:,} |" for r in rows]
    write_text(os.path.join(RESULTS, "model_params.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
