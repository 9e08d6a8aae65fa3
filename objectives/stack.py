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

from objectives.checks import check_int
from objectives.config import TrainConfig
from objectives.data import MnistData
from objectives.fused_optim import ADAM_BETAS, COEFFICIENTS, coefficients, step_rows
from objectives.model import CLASSES, LAYERS, MLP, PARAM_SHAPES
from objectives.precision import autocast
from objectives.schedules import LRSchedule
from objectives.train import epoch_permutation

__all__ = ["BOUNDS", "FusedTrial", "P", "SEGMENTS", "Stack", "stack_steps"]

# rows of the per-epoch table: one LR per layer, then Adam's two bias corrections
_ROW_BC1, _ROW_BC2 = len(LAYERS), len(LAYERS) + 1


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
    """K rows, fixed for the whole run, of one ``[K, P]`` parameter buffer and of the two state
    buffers ``m`` and ``v`` of the one update formula (:mod:`objectives.fused_optim`); a row holds
    a trial in flight, whatever its optimizer, or is idle. ``params`` are the per-layer
    ``[K, out, in]`` / ``[K, out]`` views the forward pass uses.

    A trial that ends leaves its row idle: zero weights, zero state, LR 0 and coefficients that
    keep it at zero, so it changes nothing (each row's loss and update are its own). A new trial
    is written into a free row in place (:meth:`place`: weights, zeroed state, its coefficients;
    its LRs come with the next epoch's table), outside any graph. So the buffers, their shapes
    and the step functions stay the same from the first epoch to the last, and the steps are
    captured as CUDA graphs once per stack. ``Stack.builds`` counts the stacks built in this
    process (for tests and benchmarks).
    """

    builds = 0

    def __init__(self, slots: int, device: torch.device, dtype: torch.dtype) -> None:
        check_int(slots=slots)
        Stack.builds += 1
        self.k, self.device, self.dtype = slots, device, dtype
        self.rows: list[FusedTrial | None] = [None] * slots
        self.flat = torch.zeros(slots, P, device=device, dtype=dtype)
        self.m, self.v = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        # leaves for autograd that share the buffer's memory: the update writes the buffer in place
        self.params = [self.flat[:, lo:hi].view(slots, *shape).requires_grad_()
                       for shape, lo, hi in zip(PARAM_SHAPES, BOUNDS, BOUNDS[1:])]
        # each row's optimizer as the update's coefficients, [K, 1] columns; an idle row's are 0
        # but eps (its denominator is 1, its direction its zero state)
        self.coefficients = {name: torch.zeros(slots, 1, device=device, dtype=dtype) for name in COEFFICIENTS}
        self.coefficients["eps"].fill_(1.0)
        self.adam = [False] * slots  # on the host: the table's bias corrections

    @property
    def trials(self) -> list[FusedTrial]:
        """The trials in flight, in row order."""
        return [t for t in self.rows if t is not None]

    @torch.no_grad()
    def place(self, t: FusedTrial) -> None:
        """Write the new trial ``t`` into a free row, in place: its initial weights, a zero state
        (as torch's before the first step) and its coefficients."""
        row = self.rows.index(None)
        self.rows[row], t.row = t, row
        self.flat[row].copy_(torch.cat([q.detach().reshape(-1) for q in t.fresh.parameters()]))
        t.fresh = None
        self.m[row].zero_()
        self.v[row].zero_()
        for name, value in zip(COEFFICIENTS, coefficients(t.config)):
            self.coefficients[name][row].fill_(value)
        self.adam[row] = t.config.optimizer in ("adam", "adamw")

    @torch.no_grad()
    def free(self, t: FusedTrial) -> None:
        """Leave ``t``'s row idle (after its result has been read)."""
        row = t.row
        self.rows[row] = None
        for buffer in (self.flat, self.m, self.v):
            buffer[row].zero_()  # a diverged trial's inf or NaN must not linger: 0·NaN is NaN
        for name in COEFFICIENTS:
            self.coefficients[name][row].zero_()
        self.coefficients["eps"][row] = 1.0
        self.adam[row] = False

    def buffers(self, n: int, steps: int) -> None:
        """Allocate what the steps read and write, filled per epoch: the minibatch order, one for
        all rows while every trial in flight is at the same epoch of the same shuffle seed (the
        shared batch is broadcast, not gathered K times) and one per row once trials have joined
        at different epochs (an idle row reads another's), the LR table, the step counter and
        the running training losses."""
        k = self.k
        self.shared_perm = torch.empty(n, dtype=torch.long, device=self.device)
        self.row_perm = torch.empty((k, n), dtype=torch.long, device=self.device)
        self.lr_table = torch.empty(steps, len(LAYERS) + 2, k, device=self.device, dtype=self.dtype)
        self.cursor = torch.zeros(1, dtype=torch.long, device=self.device)
        self.loss_sum = torch.zeros(k, device=self.device, dtype=self.dtype)

    def shared(self) -> bool:
        """Whether the trials in flight share their next epoch's minibatch order."""
        return len({(t.shuffle_seed, t.epoch) for t in self.trials}) == 1

    def order(self, n: int) -> torch.Tensor:
        """The next epoch's minibatch order: ``[n]`` if :meth:`shared`, else one per row (a host
        ``[K, n]`` tensor)."""
        if self.shared():
            t = self.trials[0]
            return epoch_permutation(n, t.shuffle_seed, t.epoch + 1, "cpu")
        perms: dict[tuple[int, int], torch.Tensor] = {}
        for t in self.trials:
            key = (t.shuffle_seed, t.epoch + 1)
            if key not in perms:
                perms[key] = epoch_permutation(n, *key, "cpu")
        idle = next(iter(perms.values())) if perms else torch.arange(n)
        return torch.stack([idle if t is None else perms[(t.shuffle_seed, t.epoch + 1)] for t in self.rows])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[batch, 784]`` shared by all rows, or ``[K, batch, 784]`` one per row."""
        k = self.k
        h = x.expand(k, *x.shape) if x.dim() == 2 else x
        weights, biases = self.params[0::2], self.params[1::2]
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < len(weights) - 1:
                h = torch.relu(h)
        return h  # [k, batch, CLASSES]

    def table(self, steps: int) -> torch.Tensor:
        """``[steps, layers + 2, K]``: each row's LR per layer for the next ``steps`` updates
        (stepping its schedule through them) and Adam's bias corrections (a host tensor, sent in
        one copy)."""
        idle = [0.0] * steps
        factors = torch.tensor([idle if t is None else t.factors(steps) for t in self.rows], dtype=torch.float64)  # [K, steps]
        base = torch.tensor([[0.0] * len(LAYERS) if t is None else list(t.config.initial_lrs().values())
                             for t in self.rows], dtype=torch.float64)  # an idle row's LR is 0
        s = torch.tensor([0 if t is None else t.steps for t in self.rows], dtype=torch.float64).unsqueeze(1) + torch.arange(
            1, steps + 1, dtype=torch.float64)  # [K, steps]: the optimizer step each update is
        b1, b2 = ADAM_BETAS
        adam = torch.tensor(self.adam).unsqueeze(1)  # Adam's bias corrections; 1 for the others' rows
        bc1, bc2 = torch.where(adam, 1 - b1**s, 1.0), torch.where(adam, (1 - b2**s).sqrt(), 1.0)
        host = torch.cat([base.unsqueeze(2) * factors.unsqueeze(1), bc1.unsqueeze(1), bc2.unsqueeze(1)], dim=1)  # [k, rows, steps]
        for t in self.trials:
            t.steps += steps
        return host.permute(2, 1, 0)

    @torch.no_grad()
    def update(self, grads: Sequence[torch.Tensor], lrs: torch.Tensor) -> None:
        """One optimizer step of every row; ``lrs`` is one step's row of :meth:`table`."""
        k = self.k
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


def stack_steps(stack: Stack, data: MnistData, batch_size: int, precision: str, shared: bool) -> tuple[
        Callable[[], None] | None, Callable[[], None] | None, Callable[[], None]]:
    """``(full, tail, warmup)``: one step of every row of ``stack`` on a full batch and on the
    epoch's last, shorter batch (None where the epoch has no such batch), reading the batch
    (``shared``: from the one order of all rows, else from each row's) and the LRs at
    ``stack.cursor`` from the stack's buffers; and a warm-up that computes both steps'
    gradients without updating anything (so it may run before a capture)."""
    k, n = stack.k, data.train_x.shape[0]
    full_steps, tail = divmod(n, batch_size)
    perm = stack.shared_perm if shared else stack.row_perm
    batches = perm[..., : full_steps * batch_size].view(*(() if shared else (k,)), full_steps, batch_size)

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
        if shared:
            return torch.index_select(batches, 0, stack.cursor).view(batch_size)
        return torch.index_select(batches, 1, stack.cursor).view(k, batch_size)

    def tail_batch() -> torch.Tensor:
        return perm[..., full_steps * batch_size :]

    def warmup() -> None:
        for batch, present in ((full_batch, full_steps), (tail_batch, tail)):
            if present:
                gradients(batch())

    return (lambda: step(full_batch())) if full_steps else None, (lambda: step(tail_batch())) if tail else None, warmup
