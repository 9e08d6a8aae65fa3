"""Optimizers with one param group per layer, and LR schedules (warm-up, decay) from torch.optim.lr_scheduler.

Every param group's LR is ``lr * lr_mult_layer * factor(t)``. The factor comes from a torch
scheduler stepped on a one-parameter optimizer whose LR starts at 1, rather than from a
scheduler attached to the model's optimizer, because torch's ``CosineAnnealingLR`` takes one
absolute ``eta_min`` for all groups: attached directly it would break the per-layer scaling.
The same factor object serves a single run and (later) many fused trials, so the schedule
math is torch's and written nowhere else.
"""

from __future__ import annotations

import torch
from torch import nn

from objectives.config import TrainConfig

__all__ = ["LRSchedule", "build_optimizer", "set_lr_factor"]


class LRSchedule:
    """The LR factor of ``config`` (warm-up, then ``config.decay``) as a function of the iteration.

    ``factor`` is the multiplier of the initial LR for the next update; call :meth:`step` after
    each optimizer step and :meth:`epoch_end` with the validation loss after each epoch (only
    ``plateau`` uses it). With ``T = epochs · steps_per_epoch`` iterations, per iteration t:

    - warm-up (``warmup_epochs`` W > 0, any decay but onecycle; torch's ``LinearLR`` then the
      decay, joined by ``SequentialLR``): ``f_t = r + (1 − r)·t/(W·steps_per_epoch)`` with
      ``r = warmup_start_ratio``; the decay below then runs on the remaining iterations, its own
      t counted from the end of the warm-up (``T`` is shortened by the warm-up);
    - step ``f_t = γ^⌊t/s⌋`` with ``s = step_size · steps_per_epoch``; exponential ``f_t = γ^t``
      with ``γ = exp_gamma^(1/steps_per_epoch)``; cosine ``f_t = η + ½(1 − η)(1 + cos(πt/T))``
      with ``η = cosine_eta_min_ratio``; plateau: ×``plateau_factor`` after ``plateau_patience``
      epochs without improvement (counted after the warm-up);
    - onecycle (``OneCycleLR``, Smith & Topin 2017; cosine annealing, no momentum cycling): from
      ``1/div_factor`` up to 1 over the first ``pct_start`` of the run, then down to
      ``1/(div_factor · final_div_factor)``, which it reaches at the end of the last epoch
      (``total_steps = T + 1``: the factor after the last update);
    - cosine_restarts (``CosineAnnealingWarmRestarts``, SGDR, Loshchilov & Hutter 2017):
      ``f_t = η + ½(1 − η)(1 + cos(π t_cur/T_i))``, ``η = restart_eta_min_ratio``, the first
      cycle ``T_0 = restart_period · steps_per_epoch`` iterations long, each next one
      ``restart_mult`` times longer, ``t_cur`` the iterations since the last restart.
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int, epochs: int) -> None:
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(f"steps_per_epoch and epochs must be >= 1, but got {steps_per_epoch=}, {epochs=}")
        if config.warmup_epochs >= epochs:
            raise ValueError(f"the warm-up must leave epochs for the decay: warmup_epochs={config.warmup_epochs} "
                             f"but got {epochs=}")
        self.decay = config.decay
        self._optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = torch.optim.lr_scheduler
        warm = config.warmup_epochs * steps_per_epoch
        total = epochs * steps_per_epoch - warm  # what the decay spans
        # the warm-up's LinearLR comes first: a scheduler's constructor sets the LR it starts from.
        # Stepped past its end it leaves the LR as it is, so after a constant or plateau "decay" it
        # can simply go on being stepped.
        warmup = (sched.LinearLR(self._optimizer, start_factor=config.warmup_start_ratio, end_factor=1.0,
                                 total_iters=warm) if warm else None)
        self._warmup_epochs_left = config.warmup_epochs
        decay: sched.LRScheduler | None
        if config.decay == "constant":
            decay = None
        elif config.decay == "step":
            decay = sched.StepLR(self._optimizer, step_size=config.step_size * steps_per_epoch, gamma=config.step_gamma)
        elif config.decay == "exponential":
            decay = sched.ExponentialLR(self._optimizer, gamma=config.exp_gamma ** (1.0 / steps_per_epoch))
        elif config.decay == "cosine":
            decay = sched.CosineAnnealingLR(self._optimizer, T_max=total, eta_min=config.cosine_eta_min_ratio)
        elif config.decay == "onecycle":
            pct_start = config.onecycle_pct_start
            if pct_start * (total + 1) <= 1:
                # a rise that rounds to no step at all: torch divides by zero where it is exactly
                # one step long and starts at the peak where it is shorter; here it is always the latter
                pct_start = 0.5 / (total + 1)
            decay = sched.OneCycleLR(self._optimizer, max_lr=1.0, total_steps=total + 1,
                                     pct_start=pct_start, div_factor=config.onecycle_div_factor,
                                     final_div_factor=config.onecycle_final_div_factor, anneal_strategy="cos",
                                     cycle_momentum=False)
        elif config.decay == "cosine_restarts":
            decay = sched.CosineAnnealingWarmRestarts(self._optimizer, T_0=config.restart_period * steps_per_epoch,
                                                      T_mult=config.restart_mult, eta_min=config.restart_eta_min_ratio)
        else:  # plateau, stepped per epoch with the validation loss (after the warm-up, in epoch_end)
            decay = None
            # the default threshold (1e-4 relative) counts only real improvements
            self._plateau = sched.ReduceLROnPlateau(self._optimizer, mode="min", factor=config.plateau_factor,
                                                    patience=config.plateau_patience)
        self._scheduler: sched.LRScheduler | None
        if warmup is not None and decay is not None:
            self._scheduler = sched.SequentialLR(self._optimizer, [warmup, decay], milestones=[warm])
        else:
            self._scheduler = warmup if decay is None else decay
        # The parameter has no gradient, so this step changes nothing; it only tells the scheduler
        # (which wrapped optimizer.step above) that stepping it next is in the right order.
        self._optimizer.step()

    @property
    def factor(self) -> float:
        return self._optimizer.param_groups[0]["lr"]

    def step(self) -> float:
        """Advance one iteration; returns the new factor."""
        if self._scheduler is not None:
            self._scheduler.step()
        return self.factor

    def factors(self, steps: int) -> list[float]:
        """The factors of the next ``steps`` updates, stepping through them (an epoch's LR table)."""
        out = []
        for _ in range(steps):
            out.append(self.factor)  # the factor of this update; then the schedule steps
            self.step()
        return out

    def epoch_end(self, val_loss: float) -> float:
        """End of an epoch with its validation loss; returns the (possibly reduced) factor."""
        if self.decay == "plateau":
            if self._warmup_epochs_left > 0:  # patience counts from the end of the warm-up
                self._warmup_epochs_left -= 1
            else:
                self._plateau.step(val_loss)
        return self.factor


def build_optimizer(model: nn.Module, config: TrainConfig, lrs: torch.Tensor | None = None) -> torch.optim.Optimizer:
    """``config.optimizer`` over one param group per layer (weights and bias), named by ``layer``.

    Each group carries ``initial_lr = lr * lr_mult_layer``, the LR that :func:`set_lr_factor`
    scales. With ``lrs`` (one element per layer, on the model's device) each group's ``lr`` is
    instead that element, a device scalar the caller overwrites before each step, and the
    optimizers that keep a step count keep it on the device (``capturable``): a step then reads
    nothing from the host, so it can be captured in a CUDA graph (:mod:`objectives.graphs`).
    """
    groups = []
    for i, (layer, lr) in enumerate(config.initial_lrs().items()):
        groups.append({"params": list(getattr(model, layer).parameters()), "lr": lr if lrs is None else lrs[i],
                       "initial_lr": lr, "layer": layer})
    # torch's fused kernels (SGD, Adam, AdamW; CUDA and, since torch 2.4, the CPU): one kernel per
    # step instead of one per tensor and operation
    fused, capturable = True, lrs is not None
    wd = config.weight_decay
    if config.optimizer == "sgd":  # no step count: capturable as it is
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=wd, fused=fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=wd, fused=fused, capturable=capturable)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=wd, fused=fused, capturable=capturable)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, weight_decay=wd, capturable=capturable)
    # Adagrad has no capturable flag: its step count stays on the host and only scales the LR
    # through lr_decay, which is 0 here, so a replayed step computes exactly torch's update
    return torch.optim.Adagrad(groups, lr=config.lr, weight_decay=wd)


def set_lr_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's LR to its ``initial_lr * factor`` (host floats: no device sync)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
