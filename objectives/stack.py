"""The fused engine's trials in flight, stacked: K MLPs as rows of one parameter buffer.

Each layer's weights of the K trials are stacked ``[K, out, in]`` (views of one ``[K, P]``
buffer, a trial per row) and a step runs one batched matrix product per layer
(``torch.baddbmm``) for all of them; the loss is the sum of the trials' own mean losses, so
each trial's gradient is exactly the one ``train`` computes. Per-trial hyperparameters (initial
LR, layer multipliers, decay schedule, and the optimizer itself as the coefficients of one
update formula) are per-trial tensors of the update (:mod:`objectives.fused_optim`), so a step's
update is the same handful of ops for any mix of optimizers and any K. :func:`stack_steps`
builds the step functions that read the batch order, the LR table and a step counter from the
stack's device buffers, so that :mod:`objectives.graphs` can capture them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from objectives.config import TrainConfig
from objectives.data import MnistData
from objectives.fused_optim import ADAM_BETAS, COEFFICIENTS, coefficients, step_rows
from objectives.graphs import EagerSteps, StepGraphs
from objectives.model import CLASSES, LAYERS, MLP, PARAM_SHAPES
from objectives.precision import autocast
from objectives.schedules import LRSchedule
from objectives.train import epoch_permutation

__all__ = ["BOUNDS", "FusedTrial", "P", "SEGMENTS", "Stack", "stack_steps"]

# rows of the per-epoch table: one LR per layer, then Adam's two bias corrections
_ROW_BC1, _ROW_BC2 = len(LAYERS), len(LAYERS) + 1


def _column(values: torch.Tensor) -> torch.Tensor:
    """``[k]`` per-trial values as a ``[k, 1]`` column, to broadcast over ``[k, P]`` rows."""
    return values.unsqueeze(1)


# The parameters of one trial as one flat row, in the order of MLP.parameters() (fc1.weight,
# fc1.bias, fc2.weight, …), so that a layer's weight and bias are one contiguous segment: the
# optimizer update then runs once over all of a group's parameters, with the per-layer LR
# applied per segment, instead of once per parameter tensor (a few dozen kernels per step
# instead of a few hundred, which is what bounds a step on a GPU).
BOUNDS = [0, *itertools.accumulate(math.prod(shape) for shape in PARAM_SHAPES)]  # each parameter's [lo, hi)
SEGMENTS = [(BOUNDS[2 * i], BOUNDS[2 * i + 2]) for i in range(len(LAYERS))]  # per layer: weight + bias
P = BOUNDS[-1]  # parameters per trial


@dataclass(eq=False)
class FusedTrial:
    """One job in flight: its config, schedule, progress and place in the stack."""

    index: int
    config: TrainConfig
    seed: int
    schedule: LRSchedule
    fresh: MLP | None  # initial weights, until the trial is first packed
    shuffle_seed: int = 0  # seeds its minibatch order (epoch_permutation)
    plateau_losses: Sequence[float] | None = None  # what a plateau decay reacts to, if not its val losses
    row: int = -1  # position in the current stack
    steps: int = 0  # optimizer steps done
    val: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    sec: list[float] = field(default_factory=list)

    ahead: list[float] | None = None  # the factors of its next epoch, stepped while the GPU works

    @property
    def epoch(self) -> int:  # epochs done
        return len(self.val)

    def factors(self, steps: int) -> list[float]:
        """The LR factors of the next ``steps`` updates, stepping the schedule through them."""
        if self.ahead is not None:
            out, self.ahead = self.ahead, None
            return out
        return self.schedule.factors(steps)

    def look_ahead(self, steps: int) -> None:
        """Step the schedule through the next epoch now, if nothing this epoch ends can change
        it: every decay but plateau, which reacts to the validation loss."""
        if self.schedule.decay != "plateau" and self.ahead is None:
            self.ahead = self.factors(steps)

    def lr(self, layer: str, factor: float = 1.0) -> float:
        return self.config.initial_lrs()[layer] * factor


class Stack:
    """The trials in flight as rows of one ``[k, P]`` parameter buffer, and of the two state
    buffers ``m`` and ``v`` of the one update formula (:mod:`objectives.fused_optim`), whatever
    each trial's optimizer; ``params`` are the per-layer ``[k, out, in]`` / ``[k, out]`` views
    the forward pass uses."""

    def __init__(self, trials: list[FusedTrial], previous: Stack | None, device: torch.device, dtype: torch.dtype) -> None:
        trials = sorted(trials, key=lambda t: t.index)
        self.trials, self.device, self.dtype = trials, device, dtype

        # survivors' rows are copied, newcomers' come from their fresh models; states likewise
        # (a newcomer's state is zero, as torch's is before the first step)
        def row(t: FusedTrial) -> torch.Tensor:
            if t.fresh is not None:
                return torch.cat([q.detach().reshape(-1) for q in t.fresh.parameters()])
            return previous.flat[t.row]

        self.flat = torch.stack([row(t) for t in trials])
        self.m, self.v = (torch.stack([self.flat.new_zeros(P) if t.fresh is not None else getattr(previous, name)[t.row]
                                       for t in trials]) for name in ("m", "v"))
        for i, t in enumerate(trials):
            t.row, t.fresh = i, None
        # leaves for autograd that share the buffer's memory: the update writes the buffer in place
        k = len(trials)
        self.params = [self.flat[:, lo:hi].view(k, *shape).requires_grad_()
                       for shape, lo, hi in zip(PARAM_SHAPES, BOUNDS, BOUNDS[1:])]

        # each trial's optimizer as the update's coefficients, [k, 1] columns
        values = torch.tensor([coefficients(t.config) for t in trials], dtype=torch.float64)  # [k, coefficients]
        self.coefficients = {name: _column(values[:, i].to(device=device, dtype=dtype)) for i, name in enumerate(COEFFICIENTS)}
        for flag in ("use_denom", "from_m"):
            self.coefficients[flag] = self.coefficients[flag] != 0
        self.coefficients["one"] = torch.ones_like(self.coefficients["a1"])
        self.adam = torch.tensor([t.config.optimizer in ("adam", "adamw") for t in trials])  # host: bias corrections
        self.steps: StepGraphs | EagerSteps | None = None  # set by train_stream, once per stack

    def buffers(self, n: int, steps: int) -> None:
        """Allocate what the steps read and write, filled per epoch: the minibatch order (one
        shared by all trials when they are at the same epoch of the same shuffle seed, which stays
        so until the set of trials changes, else one row per trial), the LR table, the step
        counter and the running training losses."""
        k = len(self.trials)
        self.shared_order = len({(t.shuffle_seed, t.epoch) for t in self.trials}) == 1
        self.perm = torch.empty(n if self.shared_order else (k, n), dtype=torch.long, device=self.device)
        self.lr_table = torch.empty(steps, len(LAYERS) + 2, k, device=self.device, dtype=self.dtype)
        self.cursor = torch.zeros(1, dtype=torch.long, device=self.device)
        self.loss_sum = torch.zeros(k, device=self.device, dtype=self.dtype)

    def order(self, n: int) -> torch.Tensor:
        """The trials' minibatch orders for their next epoch (host tensor, ``perm``'s shape)."""
        if self.shared_order:
            t = self.trials[0]
            return epoch_permutation(n, t.shuffle_seed, t.epoch + 1, "cpu")
        perms: dict[tuple[int, int], torch.Tensor] = {}
        for t in self.trials:
            key = (t.shuffle_seed, t.epoch + 1)
            if key not in perms:
                perms[key] = epoch_permutation(n, *key, "cpu")
        return torch.stack([perms[(t.shuffle_seed, t.epoch + 1)] for t in self.trials])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[batch, 784]`` shared by all trials, or ``[k, batch, 784]`` one per trial."""
        k = len(self.trials)
        h = x.expand(k, *x.shape) if x.dim() == 2 else x
        weights, biases = self.params[0::2], self.params[1::2]
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < len(weights) - 1:
                h = torch.relu(h)
        return h  # [k, batch, CLASSES]

    def table(self, steps: int) -> torch.Tensor:
        """``[steps, layers + 2, k]``: each trial's LR per layer for the next ``steps`` updates
        (stepping its schedule through them) and Adam's bias corrections (a host tensor, sent in
        one copy)."""
        factors = torch.tensor([t.factors(steps) for t in self.trials], dtype=torch.float64)  # [k, steps]
        base = torch.tensor([list(t.config.initial_lrs().values()) for t in self.trials], dtype=torch.float64)
        s = torch.tensor([t.steps for t in self.trials], dtype=torch.float64).unsqueeze(1) + torch.arange(
            1, steps + 1, dtype=torch.float64)  # [k, steps]: the optimizer step each update is
        b1, b2 = ADAM_BETAS
        adam = self.adam.unsqueeze(1)  # Adam's bias corrections; 1 for the others' rows
        bc1, bc2 = torch.where(adam, 1 - b1**s, 1.0), torch.where(adam, (1 - b2**s).sqrt(), 1.0)
        host = torch.cat([base.unsqueeze(2) * factors.unsqueeze(1), bc1.unsqueeze(1), bc2.unsqueeze(1)], dim=1)  # [k, rows, steps]
        for t in self.trials:
            t.steps += steps
        return host.permute(2, 1, 0)

    @torch.no_grad()
    def update(self, grads: Sequence[torch.Tensor], lrs: torch.Tensor) -> None:
        """One optimizer step of every trial; ``lrs`` is one step's row of :meth:`table`."""
        k = len(self.trials)
        g_all = torch.cat([g.reshape(k, -1) for g in grads], dim=1)  # [k, P], rows like self.flat
        lr_cols = lrs.unsqueeze(2)  # [rows, k, 1]
        step_rows(self.flat, g_all, self.m, self.v, self.coefficients, lr=lr_cols[: len(LAYERS)],
                  bc1=lr_cols[_ROW_BC1], bc2_sqrt=lr_cols[_ROW_BC2], segments=SEGMENTS)

    def model(self, t: FusedTrial) -> MLP:
        """A standalone copy of trial ``t``'s current weights."""
        model = MLP().to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            for q, lo, hi in zip(model.parameters(), BOUNDS, BOUNDS[1:]):
                q.copy_(self.flat[t.row, lo:hi].view_as(q))
        return model


def stack_steps(stack: Stack, data: MnistData, batch_size: int, precision: str) -> tuple[
        Callable[[], None] | None, Callable[[], None] | None, Callable[[], None]]:
    """``(full, tail, warmup)``: one step of every trial in ``stack`` on a full batch and on the
    epoch's last, shorter batch (None where the epoch has no such batch), reading the batch and
    the LRs at ``stack.cursor`` from the stack's buffers; and a warm-up that computes both
    steps' gradients without updating anything (so it may run before a capture)."""
    k, n = len(stack.trials), data.train_x.shape[0]
    full_steps, tail = divmod(n, batch_size)
    if stack.shared_order:
        batches = stack.perm[: full_steps * batch_size].view(full_steps, batch_size)
    else:
        batches = stack.perm[:, : full_steps * batch_size].view(k, full_steps, batch_size)

    def gradients(idx: torch.Tensor) -> tuple[torch.Tensor, Sequence[torch.Tensor]]:
        y = data.train_y[idx]  # idx: [batch] shared by all trials, or [k, batch]
        y = y.repeat(k) if y.dim() == 1 else y.reshape(-1)
        with autocast(data.device, precision):
            logits = stack.forward(data.train_x[idx])
            losses = F.cross_entropy(logits.reshape(-1, CLASSES), y, reduction="none").view(k, -1).mean(dim=1)
        return losses, torch.autograd.grad(losses.sum(), stack.params)  # each trial's own mean-loss gradient

    def step(idx: torch.Tensor) -> None:
        losses, grads = gradients(idx)
        stack.update(grads, torch.index_select(stack.lr_table, 0, stack.cursor)[0])
        stack.loss_sum.add_(losses.detach(), alpha=idx.shape[-1])  # stays on the device
        stack.cursor.add_(1)

    def full_batch() -> torch.Tensor:
        if stack.shared_order:
            return torch.index_select(batches, 0, stack.cursor).view(batch_size)
        return torch.index_select(batches, 1, stack.cursor).view(k, batch_size)

    def tail_batch() -> torch.Tensor:
        return stack.perm[..., full_steps * batch_size :]

    def warmup() -> None:
        for batch, present in ((full_batch, full_steps), (tail_batch, tail)):
            if present:
                gradients(batch())

    return (lambda: step(full_batch())) if full_steps else None, (lambda: step(tail_batch())) if tail else None, warmup
