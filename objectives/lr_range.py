"""Leslie Smith's learning-rate range test, with fastai's ``valley`` rule for the suggestion.

A fresh model trains while the LR grows exponentially from ``start_lr`` to ``end_lr`` (torch's
``ExponentialLR``, stepped per iteration); the loss of each step is smoothed with a
bias-corrected exponential moving average (β = 0.9: it lags about 10 steps; fastai's 0.98 lags
about 50, which over 200 steps shifts the curve by two decades of LR), and the test stops once
the smoothed loss exceeds
``diverge_factor`` times its best (the LR is past divergence). None of our dependencies offers
the test or the suggestion rule (fastai and torch-lr-finder do, but are not dependencies), so
both are written here, small.

The suggestion is fastai's ``valley``: the longest stretch over which the smoothed loss keeps
falling, and within it the point two thirds of the way down, where the descent is steepest and
still far from the cliff. An early spike or a noisy plateau does not end such a stretch, unlike
"steepest gradient" or "minimum / 10" rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from objectives.checks import check_int, check_seed
from objectives.config import TrainConfig
from objectives.data import MnistData
from objectives.model import build_model
from objectives.precision import autocast, check_precision, precision_context
from objectives.schedules import build_optimizer

__all__ = ["DIVERGE_FACTOR", "MIN_LR", "LRRangeResult", "lr_range_test", "valley"]


@dataclass(frozen=True)
class LRRangeResult:
    """The curve of a range test and what it suggests."""

    optimizer: str
    lrs: list[float]  # the LR of each step taken
    losses: list[float]  # the training loss of each step (nan/inf once it diverges)
    smoothed: list[float]  # bias-corrected EMA of the losses
    suggestion: float  # the suggested initial LR (valley rule)
    low: float  # suggested search range: suggestion / 10 …
    high: float  # … the LR of the lowest smoothed loss (at least 3 x the suggestion)
    diverged: bool  # stopped early because the smoothed loss exceeded diverge_factor x its best
    steps: int = 0  # the steps asked for (len(lrs) is the steps taken)

    @property
    def problems(self) -> list[str]:
        """Why the suggestion means nothing, if it does not (one sentence each; empty when the
        curve has a valley to suggest from): the loss diverged within the first tenth of the
        steps (the range starts too high), or never fell by :data:`MIN_FALL` of its start (no LR
        of the range trains: it ends too low, or the data or model are broken)."""
        out = []
        taken, asked = len(self.lrs), self.steps or len(self.lrs)
        if self.diverged and taken <= max(10, asked // 10):
            out.append(f"the loss diverged after {taken} of {asked} steps, at LR {self.lrs[-1]:.3g}: the range "
                       "starts too high, lower the start LR")
        finite = [s for s in self.smoothed if math.isfinite(s)]
        if not out and finite and min(finite) > (1 - MIN_FALL) * finite[0]:
            out.append(f"the loss never fell by {MIN_FALL:.0%} of its start ({finite[0]:.3g} to at best "
                       f"{min(finite):.3g}) between LR {self.lrs[0]:.3g} and {self.lrs[len(finite) - 1]:.3g}: "
                       "no LR of the range trains; raise the end LR")
        return out


DIVERGE_FACTOR = 4.0  # the test stops once the smoothed loss exceeds this many times its lowest
#: The smallest start LR: a float32 weight moves by less than its own rounding below it, and the
#: suggestions computed from such a start overflow (1e-320 suggested inf).
MIN_LR = 1e-12
MIN_FALL = 0.05  # a curve whose smoothed loss never falls this fraction below its start has no valley


def valley(lrs: list[float], smoothed: list[float]) -> int:
    """Index of fastai's valley suggestion: 2/3 down the longest decreasing run of the curve.

    "Longest" is the longest decreasing subsequence ending anywhere (O(n²); n is a few hundred).
    """
    n = len(smoothed)
    if n < 3:
        return max(0, n - 1)
    run = [1] * n  # length of the longest decreasing subsequence ending at i
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[max_end] < run[i]:
            max_end = i
            max_start = max_end - run[max_end]
    third = (max_end - max_start) / 3
    return min(n - 1, max(0, max_start + int(third) + int(third / 2)))


def lr_range_test(
    optimizer: str,
    data: MnistData,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 200,
    batch_size: int = 128,
    seed: int = 0,
    beta: float = 0.9,
    diverge_factor: float = DIVERGE_FACTOR,
    precision: str = "fp32",
) -> LRRangeResult:
    """Run the range test for ``optimizer`` on ``data.train_*`` (nothing else is touched).

    Reads the loss every step: the test must see divergence as it happens, and a few hundred
    host reads cost nothing next to a study. ``precision`` is the arithmetic of the runs that
    will use the range (``fp32``, ``bf16`` or ``tf32``, as in ``train``).
    """
    if not (MIN_LR <= start_lr < end_lr) or not math.isfinite(end_lr):
        raise ValueError(f"need {MIN_LR:g} <= start_lr < end_lr (finite), but got {start_lr=}, {end_lr=}")
    check_int(steps=steps, low=10)
    check_seed(seed=seed)
    if not 0 <= beta < 1 or not diverge_factor > 1:
        raise ValueError(f"need 0 <= beta < 1 and diverge_factor > 1, but got {beta=}, {diverge_factor=}")
    check_precision(precision, data.dtype, data.device)
    config = TrainConfig(optimizer=optimizer, lr=start_lr, batch_size=batch_size)
    device, n = data.device, data.train_x.shape[0]
    model = build_model(seed, device, data.dtype)
    opt = build_optimizer(model, config)
    gamma = (end_lr / start_lr) ** (1 / (steps - 1))
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    generator = torch.Generator(device=device).manual_seed(seed)
    perm, pos = torch.randperm(n, device=device, generator=generator), 0

    lrs, losses, smoothed = [], [], []
    avg, best, diverged = 0.0, math.inf, False
    with precision_context(device, precision):  # tf32: TF32 products while the sweep runs
        for step in range(steps):
            if pos + batch_size > n:  # a new epoch's order when the subset is used up
                perm, pos = torch.randperm(n, device=device, generator=generator), 0
            idx = perm[pos : pos + batch_size]
            pos += batch_size
            lrs.append(opt.param_groups[0]["lr"])
            with autocast(device, precision):
                loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
            value = loss.item()
            losses.append(value)
            avg = beta * avg + (1 - beta) * value
            smooth = avg / (1 - beta ** (step + 1))
            smoothed.append(smooth)
            if not math.isfinite(smooth) or smooth > diverge_factor * best:
                diverged = True
                break
            best = min(best, smooth)

    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    curve_lrs, curve = [lrs[i] for i in finite], [smoothed[i] for i in finite]
    suggestion = curve_lrs[valley(curve_lrs, curve)]
    lowest = curve_lrs[min(range(len(curve)), key=curve.__getitem__)]
    return LRRangeResult(
        optimizer=optimizer,
        lrs=lrs,
        losses=losses,
        smoothed=smoothed,
        suggestion=suggestion,
        low=suggestion / 10,
        high=max(lowest, 3 * suggestion),
        diverged=diverged,
        steps=steps,
    )
