"""`TrainResult`: what a training run produced, and the rules every engine applies to it.

``train`` and the fused engine (``train_many`` / ``train_stream``) both end a run where
:func:`diverged` says so and build its result with :func:`make_result`, which picks the best
epoch on the validation loss: one definition of an infeasible run and of a trial's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

__all__ = ["DEFAULT_METRIC", "DIVERGENCE_LOSS", "METRICS", "TrainResult", "check_metric", "diverged", "make_result",
           "metric_value"]

#: A mean loss above this (about 40x the loss of uniform guessing, ln 10 ≈ 2.3) counts as
#: exploding: the run is infeasible, like one whose loss is NaN or infinite.
DIVERGENCE_LOSS = 100.0

#: What a trial's value measures, all on the 10k validation images: the validation loss after the
#: last epoch (the model the whole schedule delivers), the validation error (1 - accuracy) after
#: the last epoch, or the lowest validation loss of any epoch (the model of that epoch: a recipe
#: that stops early). The default is the one whose answer tested best (README, "Which value the
#: study minimises"): a low loss also rewards an under-confident, less accurate model; and
#: cross-entropy bottoms out a few epochs in and then rises as the model grows confident while
#: the error goes on falling, so the lowest loss favours recipes stopped early.
METRICS = ("last_val_loss", "last_val_error", "min_val_loss")
DEFAULT_METRIC = "last_val_error"


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What one training run produced; per-epoch lists have one entry per epoch run."""

    val_losses: list[float]
    val_accuracies: list[float]
    train_losses: list[float]
    epoch_seconds: list[float]
    best_epoch: int | None  # 1-based epoch of the lowest finite validation loss
    best_val_loss: float  # inf when no epoch finished with a finite loss
    best_val_accuracy: float  # validation accuracy at best_epoch (nan if none)
    diverged: bool  # a non-finite or exploding loss stopped the run: infeasible
    stopped: bool  # the report callback asked to stop
    initial_lrs: dict[str, float]  # each layer's LR at step 0
    final_lrs: dict[str, float]  # each layer's LR after the last step
    model: nn.Module = field(repr=False)

    @property
    def epochs_run(self) -> int:
        return len(self.val_losses)

    @property
    def last_val_loss(self) -> float:
        """The validation loss after the last epoch (inf when no epoch finished finite)."""
        return self.val_losses[-1] if self.val_losses and not self.diverged else math.inf

    @property
    def last_val_accuracy(self) -> float:
        return self.val_accuracies[-1] if self.val_accuracies and not self.diverged else math.nan

    @property
    def seconds_per_epoch(self) -> float:
        return sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else math.nan


def diverged(train_loss: float, val_loss: float) -> bool:
    """A NaN, infinite or exploding epoch: the run is infeasible."""
    return not all(math.isfinite(v) and v <= DIVERGENCE_LOSS for v in (train_loss, val_loss))


def make_result(
    val_losses: list[float], val_accs: list[float], train_losses: list[float], epoch_seconds: list[float],
    diverged: bool, stopped: bool, initial_lrs: dict[str, float], final_lrs: dict[str, float], model: nn.Module,
) -> TrainResult:
    """A :class:`TrainResult` with the best epoch chosen on validation loss."""
    finished = val_losses[:-1] if diverged else val_losses  # the diverged epoch never counts
    best_loss, best_i = min(((loss, i) for i, loss in enumerate(finished)), default=(math.inf, None))
    return TrainResult(
        val_losses=val_losses,
        val_accuracies=val_accs,
        train_losses=train_losses,
        epoch_seconds=epoch_seconds,
        best_epoch=None if best_i is None else best_i + 1,
        best_val_loss=best_loss,
        best_val_accuracy=math.nan if best_i is None else val_accs[best_i],
        diverged=diverged,
        stopped=stopped,
        initial_lrs=initial_lrs,
        final_lrs=final_lrs,
        model=model,
    )


def check_metric(metric: str) -> None:
    """A ValueError naming ``metric`` unless it is one of :data:`METRICS`."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, but got {metric=}")


def metric_value(result: TrainResult, metric: str) -> tuple[float, int | None]:
    """``(value, epoch)``: what ``metric`` (one of :data:`METRICS`) measures of ``result``, and the
    1-based epoch whose model it measures; ``(inf, None)`` for a run that diverged (infeasible,
    for every metric: a recipe that diverged is none to recommend, whatever its earlier epochs)
    or that finished no epoch."""
    check_metric(metric)
    if result.diverged or not result.val_losses:  # infeasible, whatever its epochs before (every metric)
        return math.inf, None
    if metric == "min_val_loss":
        return result.best_val_loss, result.best_epoch
    value = result.last_val_loss if metric == "last_val_loss" else 1.0 - result.last_val_accuracy
    return value, result.epochs_run
