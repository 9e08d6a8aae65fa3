"""Optimizers with one param group per layer, and LR decay schedules from torch.optim.lr_scheduler.

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
from objectives.model import LAYERS

__all__ = ["LRSchedule", "build_optimizer", "set_lr_factor"]


class LRSchedule:
    """The decay factor of ``config.decay`` as a function of the iteration.

    ``factor`` is the multiplier of the initial LR for the next update; call :meth:`step` after
    each optimizer step and :meth:`epoch_end` with the validation loss after each epoch (only
    ``plateau`` uses it). Per iteration: step ``η_t = η0·γ^⌊t/s⌋`` with ``s = step_size ·
    steps_per_epoch``; exponential ``η_t = η0·γ^t`` with ``γ = exp_gamma^(1/steps_per_epoch)``;
    cosine ``η_t = η_min + ½(η0 − η_min)(1 + cos(πt/T_max))`` with ``T_max = epochs ·
    steps_per_epoch`` and ``η_min = cosine_eta_min_ratio·η0``.
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int, epochs: int) -> None:
        if steps_per_epoch < 1 or epochs < 1:
            raise ValueError(f"steps_per_epoch and epochs must be >= 1, but got {steps_per_epoch=}, {epochs=}")
        self.decay = config.decay
        self._optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = torch.optim.lr_scheduler
        self._scheduler: sched.LRScheduler | sched.ReduceLROnPlateau | None
        if config.decay == "constant":
            self._scheduler = None
        elif config.decay == "step":
            self._scheduler = sched.StepLR(
                self._optimizer, step_size=config.step_size * steps_per_epoch, gamma=config.step_gamma
            )
        elif config.decay == "exponential":
            self._scheduler = sched.ExponentialLR(
                self._optimizer, gamma=config.exp_gamma ** (1.0 / steps_per_epoch)
            )
        elif config.decay == "cosine":
            self._scheduler = sched.CosineAnnealingLR(
                self._optimizer, T_max=epochs * steps_per_epoch, eta_min=config.cosine_eta_min_ratio
            )
        else:  # plateau; the default threshold (1e-4 relative) counts only real improvements
            self._scheduler = sched.ReduceLROnPlateau(
                self._optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience
            )
        # The parameter has no gradient, so this step changes nothing; it only tells the scheduler
        # (which wrapped optimizer.step above) that stepping it next is in the right order.
        self._optimizer.step()

    @property
    def factor(self) -> float:
        return self._optimizer.param_groups[0]["lr"]

    def step(self) -> float:
        """Advance one iteration; returns the new factor."""
        if self._scheduler is not None and self.decay != "plateau":
            self._scheduler.step()
        return self.factor

    def epoch_end(self, val_loss: float) -> float:
        """End of an epoch with its validation loss; returns the (possibly reduced) factor."""
        if self.decay == "plateau":
            self._scheduler.step(val_loss)
        return self.factor


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``config.optimizer`` over one param group per layer (weights and bias), named by ``layer``.

    Each group carries ``initial_lr = lr * lr_mult_layer``, the LR that :func:`set_lr_factor`
    scales.
    """
    groups = []
    for layer in LAYERS:
        lr = config.lr * config.lr_mult(layer)
        groups.append({"params": list(getattr(model, layer).parameters()), "lr": lr, "initial_lr": lr, "layer": layer})
    # fused kernels where torch has them for CUDA: one launch per step instead of one per tensor
    on_cuda = next(model.parameters()).device.type == "cuda"
    wd = config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=wd, fused=on_cuda or None)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=wd, fused=on_cuda or None)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=wd, fused=on_cuda or None)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, weight_decay=wd)
    return torch.optim.Adagrad(groups, lr=config.lr, weight_decay=wd)


def set_lr_factor(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every group's LR to its ``initial_lr * factor`` (host floats: no device sync)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
