"""The fused engine's trials in flight, stacked: K MLPs as rows of one parameter buffer.

Each layer's weights of the K trials are stacked ``[K, out, in]`` (views of one ``[K, ROW]``
buffer, a trial's P parameters per row, padded to ROW) and a step runs one batched matrix
product per layer (``torch.baddbmm``) for all of them; each trial's gradient is the one ``train``
computes for its own mean loss, written straight into its row of a ``[K, ROW]`` gradient buffer. Per-trial hyperparameters (initial
LR, layer multipliers, decay schedule, and the optimizer itself as the coefficients of one
update formula) are per-trial tensors of the update (:mod:`objectives.fused_optim`), so a step's
update is the same handful of ops for any mix of optimizers and any K. :func:`stack_steps`
builds the step functions that read the batch order, the LR table and a step counter from the
stack's device buffers, so that :mod:`objectives.graphs` can capture them.

Measured on the 2-core CPU (``python -m benchmarks.fused_throughput --device cpu --ks 1,8,32,64
--epochs 1 --train-samples 10000``, 2026-11-30): 3.64 trial-epochs/s at K = 32, against 3.35 for
the one-trial engine; a step of 32 trials is 89 ms, 53 of them matrix products.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector

from objectives.checks import check_int
from objectives.config import TrainConfig
from objectives.data import MnistData
from objectives.fused_optim import COEFFICIENTS, IDLE, coefficients, step_columns, step_rows
from objectives.model import CLASSES, LAYERS, MLP, PARAM_SHAPES
from objectives.precision import autocast
from objectives.schedules import LRSchedule
from objectives.train import epoch_permutation

__all__ = ["ALIGN", "BOUNDS", "FusedTrial", "P", "ROW", "SEGMENTS", "Stack", "stack_steps"]

# the coefficients the update reads per element (the others enter the per-step table)
_DEVICE_COEFFICIENTS = ("a1", "a2", "eps", "wd_l2")


# The parameters of one trial as one flat row, in the order of MLP.parameters() (fc1.weight,
# fc1.bias, fc2.weight, …), so that a layer's weight and bias are one contiguous segment: the
# optimizer update then runs once over all of a group's parameters, with the per-layer LR
# applied per segment, instead of once per parameter tensor (a few dozen kernels per step
# instead of a few hundred, which is what bounds a step on a GPU).
BOUNDS = [0, *itertools.accumulate(math.prod(shape) for shape in PARAM_SHAPES)]  # each parameter's [lo, hi)
SEGMENTS = [(BOUNDS[2 * i], BOUNDS[2 * i + 2]) for i in range(len(LAYERS))]  # per layer: weight + bias
P = BOUNDS[-1]  # parameters per trial
# Each row of the stack's buffers is padded from P = 535,818 (≡ 2 mod 4: every row after the
# first began off a 16-byte boundary) to a multiple of ALIGN elements, so that every row, and
# every parameter in it (their sizes are multiples of 32 but for fc3's 10 biases, the last),
# starts a multiple of 128 bytes (float32) from the buffer's start, which CUDA's allocator aligns
# to 512: what the vectorised elementwise kernels of the update and the tensor-core batched
# products read at full width. The padding is zero in every buffer and stays zero: no gradient is
# written there, and the update turns a zero gradient and state into a zero direction, applied to
# no segment.
ALIGN = 32
ROW = -(-P // ALIGN) * ALIGN  # elements per row of the stack's buffers: 535,840


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
    """K rows, fixed for the whole run, of one ``[K, ROW]`` parameter buffer (P parameters and
    their padding, see :data:`ROW`), of its gradient
    buffer and of the two state buffers ``m`` and ``v`` of the one update formula
    (:mod:`objectives.fused_optim`); a row holds a trial in flight, whatever its optimizer, or is
    idle. ``params`` and ``grads`` are the per-layer ``[K, out, in]`` / ``[K, out]`` views of the
    parameter and gradient buffers.

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
        self.flat = torch.zeros(slots, ROW, device=device, dtype=dtype)  # rows padded: see ROW
        self.grad = torch.zeros_like(self.flat)  # each step's gradients land here, a layer per segment
        self.m, self.v = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        self.scratch = torch.zeros_like(self.flat)  # the update's one temporary, allocated once
        self.params = _views(self.flat)
        self.grads = _views(self.grad)
        # each row's optimizer as the update's coefficients: on the host for the per-step table,
        # and the four the update reads per element as [K, 1] device columns; an idle row's keep
        # it at zero
        self.host_coefficients = torch.tensor([IDLE] * slots, dtype=torch.float64)
        self.coefficients = {name: self.host_coefficients[:, COEFFICIENTS.index(name), None].to(device, dtype, copy=True)
                             for name in _DEVICE_COEFFICIENTS}

    @property
    def trials(self) -> list[FusedTrial]:
        """The trials in flight, in row order."""
        return [t for t in self.rows if t is not None]

    def _set_coefficients(self, row: int, values: tuple[float, ...]) -> None:
        self.host_coefficients[row] = torch.tensor(values, dtype=torch.float64)
        for name in _DEVICE_COEFFICIENTS:
            self.coefficients[name][row] = values[COEFFICIENTS.index(name)]

    @torch.no_grad()
    def place(self, t: FusedTrial) -> None:
        """Write the new trial ``t`` into a free row, in place: its initial weights, a zero state
        (as torch's before the first step) and its coefficients."""
        row = self.rows.index(None)
        self.rows[row], t.row = t, row
        self.flat[row, :P].copy_(parameters_to_vector(t.fresh.parameters()))  # in the order of BOUNDS
        t.fresh = None
        self.m[row].zero_()
        self.v[row].zero_()
        self._set_coefficients(row, coefficients(t.config))

    @torch.no_grad()
    def free(self, t: FusedTrial) -> None:
        """Leave ``t``'s row idle (after its result has been read)."""
        row = t.row
        self.rows[row] = None
        for buffer in (self.flat, self.m, self.v):
            buffer[row].zero_()  # a diverged trial's inf or NaN must not linger: 0·NaN is NaN
        self._set_coefficients(row, IDLE)

    def buffers(self, n: int, steps: int) -> None:
        """Allocate what the steps read and write, filled per epoch: the minibatch order, one for
        all rows while every trial in flight is at the same epoch of the same shuffle seed (the
        shared batch is broadcast, not gathered K times) and one per row once trials have joined
        at different epochs (an idle row reads another's), the update's per-step table, the step
        counter and the running training losses."""
        k = self.k
        self.shared_perm = torch.empty(n, dtype=torch.long, device=self.device)
        self.row_perm = torch.empty((k, n), dtype=torch.long, device=self.device)
        self.lr_table = torch.empty(steps, 2 * len(LAYERS) + 1, k, device=self.device, dtype=self.dtype)
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

    def forward(self, x: torch.Tensor, inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``x``: ``[batch, 784]`` shared by all rows, or ``[K, batch, 784]`` one per row. Each
        layer's input is appended to ``inputs`` if given (what :meth:`gradients` needs)."""
        k = self.k
        if x.dim() == 2:
            kind = x.device.type
            if torch.is_autocast_enabled(kind) and x.dtype != torch.get_autocast_dtype(kind):
                # cast the one shared batch, then expand it: autocast casting the expanded view made K
                # copies of the batch at every step (its values are the same either way)
                x = x.to(torch.get_autocast_dtype(kind))
            h = x.expand(k, *x.shape)
        else:
            h = x
        weights, biases = self.params[0::2], self.params[1::2]
        for i, (w, b) in enumerate(zip(weights, biases)):
            if inputs is not None:
                inputs.append(h)
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < len(weights) - 1:
                h = torch.relu(h)
        return h  # [k, batch, CLASSES]

    def gradients(self, x: torch.Tensor, y: torch.Tensor, precision: str) -> torch.Tensor:
        """Each row's mean cross-entropy loss on the batch ``x``, ``y`` (as :meth:`forward`; ``y``
        ``[K · batch]``), returned ``[K]``, and its gradient, written into :attr:`grad`.

        The loss's gradient with respect to the logits is autograd's; the three layers' backward
        is written out (it is two batched products and a sum per layer) so that each weight's
        gradient is computed straight into its segment of the ``[K, P]`` buffer the update reads.
        Through autograd, every gradient came back as a new tensor, transposed, and had to be
        copied and concatenated into that buffer at each step (a fifth of a K = 32 CPU step)."""
        inputs: list[torch.Tensor] = []
        with autocast(self.device, precision):
            logits = self.forward(x, inputs).requires_grad_()
            losses = F.cross_entropy(logits.reshape(-1, CLASSES), y, reduction="none").view(self.k, -1).mean(dim=1)
            (dz,) = torch.autograd.grad(losses.sum(), logits)  # each row's own mean-loss gradient
            weights, gw, gb = self.params[0::2], self.grads[0::2], self.grads[1::2]
            for i in reversed(range(len(weights))):
                h = inputs[i]
                if precision == "bf16":  # the products run in bfloat16: copied into the float32 buffer
                    gw[i].copy_(torch.bmm(dz.transpose(1, 2), h))
                else:
                    torch.bmm(dz.transpose(1, 2), h, out=gw[i])
                torch.sum(dz, dim=1, dtype=gb[i].dtype, out=gb[i])
                if i:  # the gradient of the previous layer's output, through its ReLU (whose output h is)
                    dz = torch.ops.aten.threshold_backward(torch.bmm(dz, weights[i]), h, 0)
        return losses.detach()

    def table(self, steps: int) -> torch.Tensor:
        """``[steps, 2 · layers + 1, K]``: the update's per-step scalars for the next ``steps``
        updates of every row (:func:`objectives.fused_optim.step_columns`), stepping each trial's
        schedule through them; a host tensor, sent in one copy. An idle row's LR is 0."""
        idle = [0.0] * steps
        factors = torch.tensor([idle if t is None else t.factors(steps) for t in self.rows], dtype=torch.float64)  # [K, steps]
        base = torch.tensor([[0.0] * len(LAYERS) if t is None else list(t.config.initial_lrs().values())
                             for t in self.rows], dtype=torch.float64)  # [K, layers]
        done = torch.tensor([0 if t is None else t.steps for t in self.rows], dtype=torch.float64)
        step = done.unsqueeze(1) + torch.arange(1, steps + 1, dtype=torch.float64)  # [K, steps]
        for t in self.trials:
            t.steps += steps
        return step_columns(self.host_coefficients, base.unsqueeze(2) * factors.unsqueeze(1), step)

    @torch.no_grad()
    def update(self, columns: torch.Tensor) -> None:
        """One optimizer step of every row from :attr:`grad`; ``columns`` is one step's row of
        :meth:`table`, ``[2 · layers + 1, K]``."""
        step_rows(self.flat, self.grad, self.m, self.v, self.scratch, self.coefficients, columns.unsqueeze(2),
                  segments=SEGMENTS)

    def model(self, t: FusedTrial) -> MLP:
        """A standalone copy of trial ``t``'s current weights, made on the device (a model built
        and initialised on the host and copied over, only to be overwritten, made every trial that
        ended wait for a copy from pageable memory)."""
        with torch.device("meta"):  # shapes only: no initialisation, no host memory
            model = MLP()
        model = model.to_empty(device=self.device).to(dtype=self.dtype)
        with torch.no_grad():
            for q, lo, hi in zip(model.parameters(), BOUNDS, BOUNDS[1:]):
                q.copy_(self.flat[t.row, lo:hi].view_as(q))
        return model


def _views(buffer: torch.Tensor) -> list[torch.Tensor]:
    """The per-parameter ``[K, out, in]`` / ``[K, out]`` views of a ``[K, ROW]`` buffer."""
    return [buffer[:, lo:hi].view(buffer.shape[0], *shape) for shape, lo, hi in zip(PARAM_SHAPES, BOUNDS, BOUNDS[1:])]


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

    def gradients(idx: torch.Tensor) -> torch.Tensor:
        y = data.train_y[idx]  # idx: [batch] shared by all trials, or [k, batch]
        return stack.gradients(data.train_x[idx], y.repeat(k) if y.dim() == 1 else y.reshape(-1), precision)

    def step(idx: torch.Tensor) -> None:
        losses = gradients(idx)
        stack.update(torch.index_select(stack.lr_table, 0, stack.cursor)[0])
        stack.loss_sum.add_(losses, alpha=idx.shape[-1])  # stays on the device
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
