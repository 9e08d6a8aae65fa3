"""`MnistMLPObjective`: the Optuna objective, a thin layer from a trial to `train`."""

from __future__ import annotations

import functools
import math
import os

import optuna
import torch

from objectives.checks import check_int
from objectives.data import MnistData, check_train_samples, load_mnist
from objectives.device import as_out_of_memory, resolve_device
from objectives.precision import check_precision
from objectives.space import SearchSpace, suggest_config
from objectives.config import TrainConfig
from objectives.result import DEFAULT_METRIC, TrainResult, check_metric, metric_value
from objectives.train import train

__all__ = ["MnistMLPObjective"]


class MnistMLPObjective:
    """Train the MNIST MLP with a sampled config; the value is ``metric`` on the validation images.

    Each trial samples a :class:`TrainConfig` with :func:`suggest_config`, draws its initial
    weights from ``seed + trial.number`` and its minibatch order from ``seed`` itself, shared
    by all trials (common random numbers: trials differ by their config and initial weights,
    not by the luck of the batch order, and ``train_many`` can fuse them exactly). The same
    seed gives the same values on the CPU. It reports the
    validation loss after every epoch and is pruned when the study's pruner says so. A run
    whose loss turns NaN, infinite or explodes is infeasible: it records ``diverged=True`` and
    is pruned, so it never fails the study. User attrs per trial: ``seed``, ``shuffle_seed``,
    ``precision``, ``lr``, ``initial_lr_<layer>``, ``epochs_run``, ``seconds_per_epoch``,
    ``diverged``; and for a trial with a finite epoch ``value_epoch`` (the epoch whose model the
    value measures), ``val_accuracy`` (at ``value_epoch``), ``best_epoch`` and ``min_val_loss``
    (the epoch of the lowest validation loss, and that loss), ``last_val_loss`` and
    ``last_val_accuracy`` (after its last epoch): every metric of :data:`METRICS` can be read
    back from any study.

    The data is loaded on first use and shared by every trial of the process. Nothing here
    touches the test set.

    Args:
        epochs: epochs per trial (the pruner's steps are epochs 1..epochs).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, resolved once here.
        data_dir: folder with the MNIST files; default ``STUDY_DATA_DIR``, else ``./data``.
        train_samples: train on a subset of the 50k training images (quick runs, tests).
        batch_size: examples per step.
        seed: base seed; trial ``n`` starts from weights seeded by ``seed + n``; every trial
            shuffles with ``seed``.
        space: the ranges to sample from; default :class:`SearchSpace()`. Its epoch-valued
            ranges are cut to ``epochs`` (:meth:`SearchSpace.for_epochs`).
        precision: ``fp32``, ``bf16`` for bfloat16 mixed precision (:mod:`objectives.precision`):
            faster where the device multiplies bfloat16 natively (recent x86 CPUs, GPUs since
            Ampere), or ``tf32`` (CUDA: TF32 matrix products); a study should not mix them.
        cuda_graphs: on CUDA, train with CUDA graphs (:mod:`objectives.graphs`); False: eagerly.
        metric: the trial's value, one of :data:`objectives.METRICS`: ``last_val_error`` (default;
            the validation error, 1 - accuracy, of the model the whole schedule delivers),
            ``last_val_loss`` (its validation loss) or ``min_val_loss`` (the lowest validation
            loss of any epoch). The pruner always judges the per-epoch validation loss.
    """

    def __init__(
        self,
        epochs: int = 20,
        *,
        device: str = "auto",
        data_dir: str | os.PathLike[str] | None = None,
        train_samples: int | None = None,
        batch_size: int = 128,
        seed: int = 0,
        space: SearchSpace | None = None,
        precision: str = "fp32",
        cuda_graphs: bool = True,
        metric: str = DEFAULT_METRIC,
    ) -> None:
        check_int(epochs=epochs, batch_size=batch_size)
        check_metric(metric)
        check_int(seed=seed, low=0, high=2**32 - 1)  # trial n seeds torch with seed + n: far from its 2**64
        check_train_samples(train_samples)
        if space is not None and not isinstance(space, SearchSpace):
            raise ValueError(f"space must be a SearchSpace or None, but got {space=}")
        self.epochs = epochs
        self.device = resolve_device(device)
        check_precision(precision, device=self.device)
        self.cuda_graphs = cuda_graphs
        self.data_dir = data_dir
        self.train_samples = train_samples
        self.batch_size = batch_size
        self.seed = seed
        self.space = (space or SearchSpace()).for_epochs(epochs)  # no step or patience longer than the run
        self.precision = precision
        self.metric = metric
        self._data: MnistData | None = None

    @property
    def data(self) -> MnistData:
        """The device-resident data, loaded on first use (once per process)."""
        if self._data is None:
            self._data = load_mnist(self.data_dir, device=self.device, train_samples=self.train_samples)
        return self._data

    def __getstate__(self) -> dict[str, object]:
        # a copy sent to another process loads the data there, on its own device
        return {**self.__dict__, "_data": None}

    def __call__(self, trial: optuna.Trial) -> float:
        config, seed = self.start_trial(trial)
        try:
            result = train(config, self.data, self.epochs, report=functools.partial(self.report, trial),
                           seed=seed, shuffle_seed=self.seed, precision=self.precision, cuda_graphs=self.cuda_graphs)
        except Exception as e:  # torch.OutOfMemoryError, the CPU allocator's, or one chained under another
            oom = as_out_of_memory(e)
            if oom is None:
                raise
            # this trial fails (the caller decides whether the study goes on: catch=...);
            # the cached blocks are released so that the next trial starts clean
            trial.set_user_attr("error", f"out of memory on {self.device}")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise oom from e
        return self.finish_trial(trial, result)

    # The two halves of a trial around its training, shared with the fused engine of study.run,
    # which trains many trials at once with train_many and tells the study through ask-and-tell.

    def start_trial(self, trial: optuna.Trial) -> tuple[TrainConfig, int]:
        """Sample the trial's config and record its seeds and initial LRs; returns (config, seed)."""
        config, seed, attrs = self.prepare_trial(trial)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return config, seed

    def prepare_trial(self, trial: optuna.Trial) -> tuple[TrainConfig, int, dict[str, object]]:
        """Sample the trial's config; returns (config, seed, the user attrs to record), writing no
        attr, for a caller that records many trials' attrs at once."""
        config = suggest_config(trial, self.space, batch_size=self.batch_size)
        seed = self.seed + trial.number
        attrs: dict[str, object] = {"seed": seed, "shuffle_seed": self.seed, "precision": self.precision,
                                    "lr": config.lr}
        attrs.update({f"initial_lr_{layer}": lr for layer, lr in config.initial_lrs().items()})
        return config, seed, attrs

    def report(self, trial: optuna.Trial, epoch: int, val_loss: float) -> bool:
        """Report an epoch's validation loss; True when the trial should stop (pruned)."""
        trial.report(val_loss, epoch)
        # after the last epoch there is nothing left to save: the trial is complete
        return epoch < self.epochs and trial.should_prune()

    def finish_trial(self, trial: optuna.Trial, result: TrainResult) -> float:
        """Record the result's user attrs; returns the trial's value or raises ``TrialPruned``."""
        for key, value in self.result_attrs(result).items():
            trial.set_user_attr(key, value)
        return self.outcome(result)

    def result_attrs(self, result: TrainResult) -> dict[str, object]:
        """The user attrs a finished trial records."""
        attrs: dict[str, object] = {"epochs_run": result.epochs_run, "seconds_per_epoch": result.seconds_per_epoch,
                                    "diverged": result.diverged}
        if result.best_epoch is not None:
            # a diverged run's last epoch is not finite: its accuracy is that of its best epoch
            epoch = metric_value(result, self.metric)[1] or result.best_epoch
            attrs.update(value_epoch=epoch, val_accuracy=result.val_accuracies[epoch - 1],
                         best_epoch=result.best_epoch, min_val_loss=result.best_val_loss)
            if not result.diverged:
                attrs.update(last_val_loss=result.last_val_loss, last_val_accuracy=result.last_val_accuracy)
        if result.diverged:
            last = result.val_losses[-1]
            attrs["diverged_loss"] = last if math.isfinite(last) else str(last)
        return attrs

    def outcome(self, result: TrainResult) -> float:
        """The trial's value (``metric``); raises ``TrialPruned`` for a diverged (infeasible) or
        stopped trial."""
        if result.diverged:
            last = result.val_losses[-1]
            raise optuna.TrialPruned(f"diverged in epoch {result.epochs_run} (validation loss {last})")
        if result.stopped:
            raise optuna.TrialPruned(f"pruned after epoch {result.epochs_run}")
        return metric_value(result, self.metric)[0]
