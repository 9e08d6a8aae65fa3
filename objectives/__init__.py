"""Reusable Optuna objectives for the MNIST MLP learning-rate study.

The parts compose: :func:`load_mnist` (device-resident, checksummed data),
:func:`suggest_config` over a :class:`SearchSpace` (a trial to a :class:`TrainConfig`),
:func:`train` (a config to a :class:`TrainResult`, never seeing a trial),
:func:`train_many` / :func:`train_stream` (many configs fused in the same kernels), and
:class:`MnistMLPObjective`, which ties them to an Optuna study. Importing this package has no
side effects: nothing is loaded, printed or seeded until called.
"""

from objectives.config import DECAYS, OPTIMIZERS, TrainConfig
from objectives.data import MnistData, MnistDataError, check_mnist, default_data_dir, load_mnist
from objectives.device import resolve_device
from objectives.evaluation import evaluate
from objectives.fused import train_many, train_stream
from objectives.model import LAYERS, MLP, build_model
from objectives.objective import MnistMLPObjective
from objectives.precision import PRECISIONS
from objectives.schedules import LRSchedule, build_optimizer, set_lr_factor
from objectives.space import SearchSpace, suggest_config
from objectives.result import DEFAULT_METRIC, DIVERGENCE_LOSS, METRICS, TrainResult, metric_value
from objectives.train import epoch_permutation, train

__all__ = [
    "DECAYS",
    "DEFAULT_METRIC",
    "DIVERGENCE_LOSS",
    "LAYERS",
    "LRSchedule",
    "METRICS",
    "MLP",
    "MnistData",
    "MnistDataError",
    "MnistMLPObjective",
    "OPTIMIZERS",
    "PRECISIONS",
    "SearchSpace",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "build_optimizer",
    "check_mnist",
    "default_data_dir",
    "epoch_permutation",
    "evaluate",
    "load_mnist",
    "metric_value",
    "resolve_device",
    "set_lr_factor",
    "suggest_config",
    "train",
    "train_many",
    "train_stream",
]
