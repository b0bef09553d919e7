"""Training library: recipes -> optimizers, schedules, losses, ``fit_model``, evaluation, resume."""

from repq.training.artifacts import (CheckpointError, atomic_write, check_keras_file, check_run_config, load_arrays,
                                     load_model, os_error_line, save_arrays, save_model, save_weights, write_json,
                                     write_text)
from repq.training.evaluation import evaluate, training_metrics
from repq.training.fit import fit_model
from repq.training.losses import SparseCrossEntropy, build_loss
from repq.training.optimizers import GroupedAdam, GroupedSGD, variable_kind
from repq.training.recipe import STAGES, build_optimizer, step_size_lr
from repq.training.resume import InterruptHandler, SimulatedCrash, StageCheckpoint, TrainingInterrupted
from repq.training.schedules import ConstantLR, WarmupCosineDecay, build_schedule

__all__ = ["CheckpointError", "ConstantLR", "GroupedAdam", "GroupedSGD", "InterruptHandler", "STAGES",
           "SimulatedCrash", "SparseCrossEntropy", "StageCheckpoint", "TrainingInterrupted", "WarmupCosineDecay",
           "atomic_write", "build_loss", "build_optimizer", "build_schedule", "check_keras_file", "check_run_config",
           "evaluate", "fit_model", "load_arrays", "load_model", "os_error_line", "save_arrays", "save_model", "save_weights",
           "step_size_lr", "training_metrics", "variable_kind", "write_json", "write_text"]
