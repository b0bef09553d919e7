"""Training library: recipes -> optimizers, schedules, losses, ``fit_model``, evaluation."""

from repq.training.artifacts import save_model, write_json, write_text
from repq.training.evaluation import evaluate, training_metrics
from repq.training.fit import fit_model
from repq.training.losses import SparseCrossEntropy, build_loss
from repq.training.optimizers import GroupedAdam, GroupedSGD, variable_kind
from repq.training.recipe import STAGES, build_optimizer, step_size_lr
from repq.training.schedules import ConstantLR, WarmupCosineDecay, build_schedule

__all__ = ["ConstantLR", "GroupedAdam", "GroupedSGD", "STAGES", "SparseCrossEntropy", "WarmupCosineDecay",
           "build_loss", "build_optimizer", "build_schedule", "evaluate", "fit_model", "save_model",
           "step_size_lr", "training_metrics", "variable_kind", "write_json", "write_text"]
