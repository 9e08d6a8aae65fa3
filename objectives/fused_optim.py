"""The five optimizers' update arithmetic for K trials at once, each with its own LR per layer.

torch.optim cannot do the fused engine's update: its tensor ``lr`` must have one element, while
here every trial (a row of a ``[k, P]`` parameter buffer) has its own LR per layer. So the update
is written here for the five optimizers of the search space, mirroring torch's single-tensor
implementations step by step (same defaults, same order of operations), and checked against
them: in float64 on the CPU, ``train_many`` gives the per-epoch validation losses and final
weights of K separate ``train`` runs to 1e-9 (``tests/test_fused.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from objectives.config import OPTIMIZERS

__all__ = ["ADAM_BETAS", "STATE", "step_rows"]

# torch.optim defaults, which ``train`` uses through build_optimizer
ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8
_RMSPROP_ALPHA, _RMSPROP_EPS = 0.99, 1e-8
_ADAGRAD_EPS = 1e-10
#: Optimizer state per parameter; all start at zero (for SGD's buffer, 0·momentum + g is exactly
#: torch's first-step clone of g).
STATE = {"sgd": ("buf",), "adam": ("exp_avg", "exp_avg_sq"), "adamw": ("exp_avg", "exp_avg_sq"),
         "rmsprop": ("square_avg",), "adagrad": ("sum",)}


def _direction(optimizer: str, p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor],
               momentum: torch.Tensor, wd: torch.Tensor | None, bc2_sqrt: torch.Tensor) -> torch.Tensor:
    """Update the optimizer state of the rows ``p`` with their gradient ``g`` and return the
    direction that the LR scales (``p -= lr · direction``), in the order of torch's single-tensor
    implementation."""
    if wd is not None and optimizer != "adamw":
        g = g + wd * p  # grad.add(param, alpha=weight_decay)
    if optimizer == "sgd":
        return state["buf"].mul_(momentum).add_(g)
    if optimizer in ("adam", "adamw"):
        beta1, beta2 = ADAM_BETAS
        state["exp_avg"].lerp_(g, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / bc2_sqrt).add_(_ADAM_EPS)
        return state["exp_avg"] / denom
    if optimizer == "rmsprop":
        state["square_avg"].mul_(_RMSPROP_ALPHA).addcmul_(g, g, value=1 - _RMSPROP_ALPHA)
        return g / state["square_avg"].sqrt().add_(_RMSPROP_EPS)
    if optimizer == "adagrad":
        state["sum"].addcmul_(g, g, value=1)
        return g / state["sum"].sqrt().add_(_ADAGRAD_EPS)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, but got {optimizer=}")


@torch.no_grad()
def step_rows(optimizer: str, p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], *,
              momentum: torch.Tensor, wd: torch.Tensor | None, lr: torch.Tensor, bc1: torch.Tensor,
              bc2_sqrt: torch.Tensor, segments: Sequence[tuple[int, int]]) -> None:
    """One step of ``optimizer`` on the rows ``p`` (``[k, P]``, k trials, written in place) with
    their gradients ``g``. ``momentum``, ``wd`` (None: no trial of these rows has weight decay),
    Adam's bias corrections ``bc1`` and ``bc2_sqrt`` are ``[k, 1]`` columns; ``lr`` is
    ``[layers, k, 1]``, each layer's LR applied to its ``segments`` ``(lo, hi)`` of the row."""
    direction = _direction(optimizer, p, g, state, momentum, wd, bc2_sqrt)
    if optimizer in ("adam", "adamw"):
        if wd is not None and optimizer == "adamw":
            for layer, (lo, hi) in enumerate(segments):
                p[:, lo:hi].mul_(1 - lr[layer] * wd)  # decoupled: param.mul_(1 - lr * weight_decay)
        lr = lr / bc1  # step_size = lr / bias_correction1
    for layer, (lo, hi) in enumerate(segments):
        p[:, lo:hi].addcmul_(lr[layer], direction[:, lo:hi], value=-1)  # p -= lr · direction
