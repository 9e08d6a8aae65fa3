"""The values the commands' parsers need, without importing torch or Optuna.

``python -m study.run --help`` (and every bad flag) answers before the seconds of ``import
torch``: each command parses its arguments first and imports the rest after. The values below
are copies of the libraries' own (``objectives.data.TRAIN_SIZE``, …), because importing any
``objectives`` module imports torch; ``tests/test_cli.py`` checks that every copy equals its
source.
"""

from __future__ import annotations

__all__ = ["AUTO_SLOTS_MAX", "CPU_CANDIDATES", "DEFAULT_METRIC", "DEFAULT_STORAGE", "DEFAULT_STUDY_NAME", "METRICS",
           "MIN_LR", "OPTIMIZERS", "PRECISIONS", "PRUNERS", "SAMPLERS", "TRAIN_SIZE"]

TRAIN_SIZE = 50_000  # objectives.data.TRAIN_SIZE: the training images left after the 10k validation split
AUTO_SLOTS_MAX = 64  # objectives.memory.AUTO_SLOTS_MAX
PRECISIONS = ("fp32", "bf16", "tf32")  # objectives.precision.PRECISIONS
METRICS = ("last_val_loss", "last_val_error", "min_val_loss")  # objectives.METRICS
DEFAULT_METRIC = "last_val_error"  # objectives.DEFAULT_METRIC
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")  # objectives.OPTIMIZERS
MIN_LR = 1e-12  # objectives.lr_range.MIN_LR
DEFAULT_STORAGE = "sqlite:///studies/lr-study.db"  # storage.DEFAULT_STORAGE
DEFAULT_STUDY_NAME = "mnist-mlp-lr"  # study.experiment.DEFAULT_STUDY_NAME
SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc")  # study.choices.SAMPLERS
PRUNERS = ("median", "hyperband", "sha", "patient", "none")  # study.choices.PRUNERS
#: On a CPU the final word's runs go one after another: its default candidates are fewer.
CPU_CANDIDATES = 4
