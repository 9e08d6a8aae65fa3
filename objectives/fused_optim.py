"""The five optimizers' update for K trials at once, as one formula with per-trial coefficients.

torch.optim cannot do the fused engine's update: its tensor ``lr`` must have one element, while
here every trial (a row of a ``[k, P]`` parameter buffer) has its own LR per layer. So the update
is written here. It is one formula over all the rows, whatever the mix of optimizers: each
trial's optimizer is a set of coefficients (:func:`coefficients`), and a step is the same
handful of kernels for any mix and any K (``tests/test_step_loop.py`` counts them). With the
coefficients of each optimizer it is torch's single-tensor implementation, step by step (same
defaults; the states are kept scaled, see below), and it is checked against them: in float64 on
the CPU, ``train_many`` gives the per-epoch validation losses and final weights of K separate
``train`` runs to 1e-9 (``tests/test_fused.py``), a short last batch included.

The optimizers' update, with ``m`` and ``v`` their states as torch keeps them::

    g  = grad + wd_l2 · p                      L2 weight decay (all but AdamW)
    m  = a1 · m + b1 · g                       SGD's momentum buffer; Adam's first moment; g itself
                                               for RMSprop and Adagrad (a1 = 0, b1 = 1)
    v  = a2 · v + b2 · g²                      Adam's second moment; RMSprop's and Adagrad's sums
    d  = √v / bc2 + eps                        the denominator: 1 for SGD (v = 0, eps = 1)
    p ← p · (1 − lr · wd_decoupled) − lr / bc1 · m / d

with ``bc1``, ``bc2`` Adam's bias corrections of the trial's step (1 for the others). What runs
keeps ``m̃ = m / b1`` and ``ṽ = v / b2`` instead (SGD: ``ṽ = g²``, never read), so that each
state is one kernel that reads and writes it once, and folds the per-step scalars into a table
the host computes in float64 for the whole epoch (:func:`step_columns`)::

    g ← g + wd_l2 · p                          in place: the gradient buffer is the engine's
    m̃ ← g + a1 · m̃
    ṽ ← a2 · ṽ + g · g
    d  = √ṽ · s2 + eps                         s2 = √b2 / bc2  (0 for SGD: d = eps = 1)
    p ← p · keep − step · m̃ / d                keep = 1 − lr · wd_decoupled, step = lr · b1 / bc1

per layer for ``keep`` and ``step`` (each layer has its LR). No kernel allocates: on a CPU a
fresh ``[K, P]`` temporary is fresh pages, which cost more than the arithmetic (the update was
half of a K = 32 step there). An SGD row whose gradient squares past the dtype's range
(|g| > 1.8e19 in float32) gets NaN where torch would take a huge step: a diverged trial either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from objectives.config import OPTIMIZERS, TrainConfig

__all__ = ["ADAM_BETAS", "COEFFICIENTS", "IDLE", "coefficients", "step_columns", "step_rows"]

# torch.optim defaults, which ``train`` uses through build_optimizer
ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8
_RMSPROP_ALPHA, _RMSPROP_EPS = 0.99, 1e-8
_ADAGRAD_EPS = 1e-10

#: A trial's optimizer as the coefficients of the update, in the order of :func:`coefficients`;
#: ``bias_correction`` is 1 for Adam's rows (their ``bc1``, ``bc2``), 0 for the others'.
COEFFICIENTS = ("a1", "b1", "a2", "b2", "eps", "wd_l2", "wd_decoupled", "bias_correction")
#: The coefficients of an idle row: its weights, states and gradient stay finite and it never moves.
IDLE = (0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0)


def coefficients(config: TrainConfig) -> tuple[float, ...]:
    """``config``'s optimizer as the coefficients of the update (:data:`COEFFICIENTS`). Every
    state starts at zero (for SGD's buffer, 0·momentum + g is exactly torch's first-step clone
    of g)."""
    opt, wd = config.optimizer, config.weight_decay
    beta1, beta2 = ADAM_BETAS
    if opt == "sgd":  # no denominator: s2 = 0 and eps = 1, so d = 1 exactly
        return (config.momentum, 1.0, 0.0, 0.0, 1.0, wd, 0.0, 0.0)
    if opt == "adam":
        return (beta1, 1 - beta1, beta2, 1 - beta2, _ADAM_EPS, wd, 0.0, 1.0)
    if opt == "adamw":
        return (beta1, 1 - beta1, beta2, 1 - beta2, _ADAM_EPS, 0.0, wd, 1.0)
    if opt == "rmsprop":  # the numerator is g: m = 0 · m + 1 · g
        return (0.0, 1.0, _RMSPROP_ALPHA, 1 - _RMSPROP_ALPHA, _RMSPROP_EPS, wd, 0.0, 0.0)
    if opt == "adagrad":
        return (0.0, 1.0, 1.0, 1.0, _ADAGRAD_EPS, wd, 0.0, 0.0)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, but got {opt=}")


def step_columns(c: torch.Tensor, lr: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The per-step scalars of the update, ``[steps, 2·layers + 1, k]``: each layer's ``step``,
    each layer's ``keep``, then ``s2`` (see the module's docstring), for ``k`` rows.

    ``c``: ``[k, len(COEFFICIENTS)]``, each row's coefficients; ``lr``: ``[k, layers, steps]``,
    each row's LR per layer for each update; ``step``: ``[k, steps]``, the optimizer step each
    update is (1 for a trial's first). Computed in float64 (on the host: one copy per epoch)."""
    c, lr, step = c.double(), lr.double(), step.double()
    col = {name: c[:, i, None] for i, name in enumerate(COEFFICIENTS)}  # [k, 1]
    beta1, beta2 = ADAM_BETAS
    adam = col["bias_correction"] > 0
    bc1 = torch.where(adam, 1 - beta1**step, 1.0)  # [k, steps]
    bc2 = torch.where(adam, (1 - beta2**step).sqrt(), 1.0)
    step_size = lr * (col["b1"] / bc1).unsqueeze(1)  # Adam's lr / bias_correction1, times b1: m = b1 · m̃
    keep = 1 - lr * col["wd_decoupled"].unsqueeze(1)  # AdamW's param.mul_(1 - lr * weight_decay)
    s2 = (col["b2"].sqrt() / bc2).unsqueeze(1)  # √v / bc2 = √ṽ · √b2 / bc2
    return torch.cat([step_size, keep, s2], dim=1).permute(2, 1, 0)


@torch.no_grad()
def step_rows(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, scratch: torch.Tensor,
              c: dict[str, torch.Tensor], columns: torch.Tensor, *, segments: Sequence[tuple[int, int]]) -> None:
    """One step of every row of ``p`` (``[k, P]``, k trials, written in place) with its gradient
    ``g`` (overwritten), its scaled states ``m`` and ``v`` (in place) and ``scratch`` (any
    ``[k, P]`` buffer). ``c`` holds the ``[k, 1]`` columns ``a1``, ``a2``, ``eps`` and ``wd_l2``;
    ``columns`` is one step of :func:`step_columns`, ``[2·layers + 1, k, 1]``, each layer's LR
    applied to its ``segments`` ``(lo, hi)`` of the row. The same kernels whatever the rows'
    optimizers, and none allocates a ``[k, P]`` tensor."""
    layers = len(segments)
    g.addcmul_(c["wd_l2"], p)  # grad.add(param, alpha=weight_decay)
    torch.addcmul(g, c["a1"], m, out=m)  # m̃ = g + a1 · m̃
    v.mul_(c["a2"]).addcmul_(g, g)  # ṽ = a2 · ṽ + g²
    d = torch.sqrt(v, out=scratch)
    torch.addcmul(c["eps"], columns[2 * layers], d, out=d)  # d = √ṽ · s2 + eps
    direction = torch.div(m, d, out=d)
    for layer, (lo, hi) in enumerate(segments):
        p[:, lo:hi].mul_(columns[layers + layer])  # decoupled decay: param.mul_(1 - lr * weight_decay)
        p[:, lo:hi].addcmul_(columns[layer], direction[:, lo:hi], value=-1)  # p -= step · m̃ / d
