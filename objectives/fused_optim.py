"""The five optimizers' update for K trials at once, as one formula with per-trial coefficients.

torch.optim cannot do the fused engine's update: its tensor ``lr`` must have one element, while
here every trial (a row of a ``[k, P]`` parameter buffer) has its own LR per layer. So the update
is written here. It is one formula over all the rows, whatever the mix of optimizers: each
trial's optimizer is a set of coefficients (:func:`coefficients`), and a step is the same
handful of kernels for any mix and any K (``tests/test_step_loop.py`` counts them). With the
coefficients of each optimizer it is torch's single-tensor implementation, step by step (same
defaults, same order of the arithmetic that matters), and it is checked against them: in
float64 on the CPU, ``train_many`` gives the per-epoch validation losses and final weights of
K separate ``train`` runs to 1e-9 (``tests/test_fused.py``), a short last batch included.

    g  = grad + wd_l2 · p                      L2 weight decay (all but AdamW)
    m  = a1 · m + b1 · g                       SGD's momentum buffer; Adam's first moment; g itself
                                               for RMSprop and Adagrad (a1 = 0, b1 = 1)
    v  = a2 · v + b2 · g²                      Adam's second moment; RMSprop's and Adagrad's sums
    d  = √v / bc2 + eps                        the denominator: 1 for SGD (v = 0, eps = 1)
    p ← p · (1 − lr · wd_decoupled)            AdamW's decoupled weight decay
    p ← p − lr / bc1 · m / d

with ``bc1``, ``bc2`` Adam's bias corrections of the trial's step (1 for the others).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from objectives.config import OPTIMIZERS, TrainConfig

__all__ = ["ADAM_BETAS", "COEFFICIENTS", "coefficients", "step_rows"]

# torch.optim defaults, which ``train`` uses through build_optimizer
ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8
_RMSPROP_ALPHA, _RMSPROP_EPS = 0.99, 1e-8
_ADAGRAD_EPS = 1e-10

#: The per-trial coefficients of :func:`step_rows`, in the order of :func:`coefficients`.
COEFFICIENTS = ("a1", "b1", "a2", "b2", "eps", "wd_l2", "wd_decoupled")


def coefficients(config: TrainConfig) -> tuple[float, ...]:
    """``config``'s optimizer as the coefficients of the update (:data:`COEFFICIENTS`). Every
    state starts at zero (for SGD's buffer, 0·momentum + g is exactly torch's first-step clone
    of g)."""
    opt, wd = config.optimizer, config.weight_decay
    beta1, beta2 = ADAM_BETAS
    if opt == "sgd":  # no denominator: v stays 0 and eps is 1, so d = 1 exactly
        return (config.momentum, 1.0, 0.0, 0.0, 1.0, wd, 0.0)
    if opt == "adam":
        return (beta1, 1 - beta1, beta2, 1 - beta2, _ADAM_EPS, wd, 0.0)
    if opt == "adamw":
        return (beta1, 1 - beta1, beta2, 1 - beta2, _ADAM_EPS, 0.0, wd)
    if opt == "rmsprop":  # the numerator is g: m = 0 · m + 1 · g
        return (0.0, 1.0, _RMSPROP_ALPHA, 1 - _RMSPROP_ALPHA, _RMSPROP_EPS, wd, 0.0)
    if opt == "adagrad":
        return (0.0, 1.0, 1.0, 1.0, _ADAGRAD_EPS, wd, 0.0)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, but got {opt=}")


@torch.no_grad()
def step_rows(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, c: dict[str, torch.Tensor], *,
              lr: torch.Tensor, bc1: torch.Tensor, bc2_sqrt: torch.Tensor, segments: Sequence[tuple[int, int]]) -> None:
    """One step of every row of ``p`` (``[k, P]``, k trials, written in place) with its gradient
    ``g``, its states ``m`` and ``v`` (in place) and its coefficients ``c`` (``[k, 1]`` columns,
    :data:`COEFFICIENTS`). ``bc1``, ``bc2_sqrt`` are
    ``[k, 1]``; ``lr`` is ``[layers, k, 1]``, each layer's LR applied to its ``segments``
    ``(lo, hi)`` of the row. The same kernels whatever the rows' optimizers."""
    g = g.addcmul(c["wd_l2"], p)  # grad.add(param, alpha=weight_decay)
    m.mul_(c["a1"]).addcmul_(c["b1"], g)
    v.mul_(c["a2"]).addcmul_(g.mul(c["b2"]), g)
    direction = v.sqrt().div_(bc2_sqrt).add_(c["eps"])  # the denominator, then m over it, in place
    direction = torch.div(m, direction, out=direction)
    step = lr / bc1  # Adam's step_size = lr / bias_correction1; lr for the others (bc1 = 1)
    for layer, (lo, hi) in enumerate(segments):
        p[:, lo:hi].mul_(1 - lr[layer] * c["wd_decoupled"])  # decoupled: param.mul_(1 - lr * weight_decay)
        p[:, lo:hi].addcmul_(step[layer], direction[:, lo:hi], value=-1)  # p -= lr · direction
