"""`train_many` / `train_stream`: many configurations of the MLP trained in the same kernels.

Each layer's weights of the K trials in flight are stacked ``[K, out, in]`` (views of one
``[K, P]`` buffer, a trial per row) and every step runs one batched matrix product per layer
(``torch.baddbmm``) for all of them; the loss is the sum of the trials' own mean losses, so
each trial's gradient is exactly the one ``train`` computes.
Per-trial hyperparameters (initial LR, layer multipliers, decay schedule, momentum, weight
decay) become per-trial tensors applied in the update. The schedules are the same
:class:`LRSchedule` objects as in ``train`` (torch schedulers on a one-parameter optimizer),
one per trial, plateau fed with the trial's own validation loss; at the start of each epoch the
host steps them through the epoch and sends the whole LR table to the device in one copy, so
the step loop has no host sync and no per-step host-to-device copy.

torch.optim cannot do the update: its tensor ``lr`` must have one element, while here every
trial has its own LR per layer. So the update is written below for the five optimizers of the
search space, mirroring torch's single-tensor implementations step by step (same defaults,
same order of operations), and checked against them: in float64 on the CPU, ``train_many``
gives the per-epoch validation losses and final weights of K separate ``train`` runs to 1e-9,
refilled slots included (``tests/test_fused.py``). Trials are grouped by optimizer into
contiguous blocks of rows, so a step's update is a handful of ops per optimizer, whatever K.

Every trial shuffles with :func:`epoch_permutation` of one shared ``shuffle_seed`` (common
random numbers), so its epoch e sees the same batches as ``train`` with that seed, whenever it
runs. A trial ends at an epoch boundary (last epoch, its report asked to stop, or its loss
diverged); its slot is then refilled with the next job, which starts at its own epoch 1 with its
own schedule while the others go on, each slot gathering its own minibatch. The stacks are
rebuilt only when the set of trials changes, so finished trials cost nothing afterwards.

On CUDA a step of all the trials in flight is one CUDA graph (:mod:`objectives.graphs`),
captured when the stack is rebuilt and replayed for every step until the set changes again; it
reads the batch order, the LR table and a step counter from the stack's device buffers. The
host's per-epoch share (stepping the schedules for the next epoch's LR table) is done while the
GPU still trains the current epoch. Measured on an H100 (``python -m benchmarks.fused_throughput
--device cuda``, 50k images, 2 epochs): 56.5 trial-epochs/s at K = 32 against 23.0 eagerly and
10.1 for the one-trial engine; K = 32 is then bound by the update's elementwise kernels, not by
launches (README, "Measured").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from objectives.checks import check_int
from objectives.config import OPTIMIZERS, TrainConfig
from objectives.data import MnistData
from objectives.model import LAYERS, MLP, build_model
from objectives.graphs import EagerSteps, StepGraphs
from objectives.precision import autocast, check_precision, precision_context
from objectives.schedules import LRSchedule
from objectives.evaluation import EVAL_CHUNK, eval_sums
from objectives.result import TrainResult, diverged, make_result
from objectives.train import epoch_permutation

__all__ = ["AUTO_SLOTS_MAX", "auto_slots", "train_many", "train_stream"]

#: ``report(index, epoch, val_loss)``: ``index`` is the job's position in the input.
ReportMany = Callable[[int, int, float], "bool | None"]
ReportEpoch = Callable[[list[tuple[int, int, float]]], Iterable[int]]

# torch.optim defaults, which ``train`` uses through build_optimizer
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8
_RMSPROP_ALPHA, _RMSPROP_EPS = 0.99, 1e-8
_ADAGRAD_EPS = 1e-10
# optimizer state per parameter; all start at zero (for SGD's buffer, 0·momentum + g is
# exactly torch's first-step clone of g)
_STATE = {"sgd": ("buf",), "adam": ("exp_avg", "exp_avg_sq"), "adamw": ("exp_avg", "exp_avg_sq"),
          "rmsprop": ("square_avg",), "adagrad": ("sum",)}
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
_SHAPES = [shape for i, o in zip((784, 512, 256), (512, 256, 10)) for shape in ((o, i), (o,))]
_BOUNDS = [0]
for _shape in _SHAPES:
    _BOUNDS.append(_BOUNDS[-1] + math.prod(_shape))
_SEGMENTS = [(_BOUNDS[2 * i], _BOUNDS[2 * i + 2]) for i in range(len(LAYERS))]  # per layer: weight + bias
_P = _BOUNDS[-1]


def _direction(optimizer: str, p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor],
               momentum: torch.Tensor, wd: torch.Tensor | None, bc2_sqrt: torch.Tensor) -> torch.Tensor:
    """Update the optimizer state of the rows ``p`` (k trials of one optimizer, ``[k, P]``) with
    their gradient ``g`` and return the direction that the LR scales (``p -= lr · direction``),
    in the order of torch's single-tensor implementation. ``momentum``, ``wd`` (None: no trial
    of the group has weight decay) and Adam's ``bc2_sqrt`` are ``[k, 1]`` columns; Adam's other
    bias correction divides the LR (see :meth:`_Stack.update`)."""
    if wd is not None and optimizer != "adamw":
        g = g + wd * p  # grad.add(param, alpha=weight_decay)
    if optimizer == "sgd":
        return state["buf"].mul_(momentum).add_(g)
    if optimizer in ("adam", "adamw"):
        beta1, beta2 = _ADAM_BETAS
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


@dataclass(eq=False)
class _Trial:
    """One job in flight: its config, schedule, progress and place in the stack."""

    index: int
    config: TrainConfig
    seed: int
    schedule: LRSchedule
    fresh: MLP | None  # initial weights, until the trial is first packed
    shuffle_seed: int = 0  # seeds its minibatch order (epoch_permutation)
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


class _Stack:
    """The trials in flight as rows of one ``[k, P]`` parameter buffer (and one per optimizer
    state), sorted by optimizer so that each optimizer's trials are a contiguous block of rows;
    ``params`` are the per-layer ``[k, out, in]`` / ``[k, out]`` views the forward pass uses."""

    def __init__(self, trials: list[_Trial], previous: _Stack | None, device: torch.device, dtype: torch.dtype) -> None:
        trials = sorted(trials, key=lambda t: (OPTIMIZERS.index(t.config.optimizer), t.index))
        self.trials, self.device, self.dtype = trials, device, dtype
        self.groups: list[tuple[str, int, int]] = []  # (optimizer, start, stop) rows of the stack
        for opt in OPTIMIZERS:
            rows = [i for i, t in enumerate(trials) if t.config.optimizer == opt]
            if rows:
                self.groups.append((opt, rows[0], rows[-1] + 1))
        old_start = {opt: a for opt, a, _ in previous.groups} if previous else {}

        # survivors' rows are copied, newcomers' come from their fresh models; states likewise
        # (a newcomer's state is zero, as torch's is before the first step)
        def row(t: _Trial) -> torch.Tensor:
            if t.fresh is not None:
                return torch.cat([q.detach().reshape(-1) for q in t.fresh.parameters()])
            return previous.flat[t.row]

        self.flat = torch.stack([row(t) for t in trials])
        self.states: dict[str, dict[str, torch.Tensor]] = {}
        for opt, a, b in self.groups:
            self.states[opt] = {
                name: torch.stack([self.flat.new_zeros(_P) if t.fresh is not None
                                   else previous.states[opt][name][t.row - old_start[opt]] for t in trials[a:b]])
                for name in _STATE[opt]
            }
        for i, t in enumerate(trials):
            t.row, t.fresh = i, None
        # leaves for autograd that share the buffer's memory: the update writes the buffer in place
        k = len(trials)
        self.params = [self.flat[:, lo:hi].view(k, *shape).requires_grad_()
                       for shape, lo, hi in zip(_SHAPES, _BOUNDS, _BOUNDS[1:])]

        cfgs = [t.config for t in trials]
        self.momentum = _column(torch.tensor([c.momentum for c in cfgs], device=device, dtype=dtype))
        self.wd = _column(torch.tensor([c.weight_decay for c in cfgs], device=device, dtype=dtype))
        # decided on the host, once: a device-side test per step would be a host sync
        self.has_wd = {opt: any(c.weight_decay != 0 for c in cfgs[a:b]) for opt, a, b in self.groups}
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
        return h  # [k, batch, 10]

    def table(self, steps: int) -> torch.Tensor:
        """``[steps, layers + 2, k]``: each trial's LR per layer for the next ``steps`` updates
        (stepping its schedule through them) and Adam's bias corrections (a host tensor, sent in
        one copy)."""
        factors = torch.tensor([t.factors(steps) for t in self.trials], dtype=torch.float64)  # [k, steps]
        base = torch.tensor([list(t.config.initial_lrs().values()) for t in self.trials], dtype=torch.float64)
        s = torch.tensor([t.steps for t in self.trials], dtype=torch.float64).unsqueeze(1) + torch.arange(
            1, steps + 1, dtype=torch.float64)  # [k, steps]: the optimizer step each update is
        b1, b2 = _ADAM_BETAS
        host = torch.cat([base.unsqueeze(2) * factors.unsqueeze(1), (1 - b1**s).unsqueeze(1),
                          (1 - b2**s).sqrt().unsqueeze(1)], dim=1)  # [k, rows, steps]
        for t in self.trials:
            t.steps += steps
        return host.permute(2, 1, 0)

    @torch.no_grad()
    def update(self, grads: Sequence[torch.Tensor], lrs: torch.Tensor) -> None:
        """One optimizer step of every trial; ``lrs`` is one step's row of :meth:`table`."""
        k = len(self.trials)
        g_all = torch.cat([g.reshape(k, -1) for g in grads], dim=1)  # [k, P], rows like self.flat
        lr_cols = lrs.unsqueeze(2)  # [rows, k, 1]
        for opt, a, b in self.groups:
            p, wd = self.flat[a:b], self.wd[a:b] if self.has_wd[opt] else None
            direction = _direction(opt, p, g_all[a:b], self.states[opt], self.momentum[a:b], wd,
                                   lr_cols[_ROW_BC2, a:b])
            lr = lr_cols[: len(LAYERS), a:b]  # [layers, k, 1]
            if opt in ("adam", "adamw"):
                if wd is not None and opt == "adamw":
                    for layer, (lo, hi) in enumerate(_SEGMENTS):
                        p[:, lo:hi].mul_(1 - lr[layer] * wd)  # decoupled: param.mul_(1 - lr * weight_decay)
                lr = lr / lr_cols[_ROW_BC1, a:b]  # step_size = lr / bias_correction1
            for layer, (lo, hi) in enumerate(_SEGMENTS):
                p[:, lo:hi].addcmul_(lr[layer], direction[:, lo:hi], value=-1)  # p -= lr · direction

    def model(self, t: _Trial) -> MLP:
        """A standalone copy of trial ``t``'s current weights."""
        model = MLP().to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            for q, lo, hi in zip(model.parameters(), _BOUNDS, _BOUNDS[1:]):
                q.copy_(self.flat[t.row, lo:hi].view_as(q))
        return model


def _steps(stack: _Stack, data: MnistData, batch_size: int, precision: str) -> tuple[
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
            losses = F.cross_entropy(logits.reshape(-1, 10), y, reduction="none").view(k, -1).mean(dim=1)
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


def train_stream(
    jobs: Iterable[tuple[TrainConfig, int] | tuple[TrainConfig, int, int]],
    data: MnistData,
    epochs: int,
    *,
    slots: int,
    report: ReportMany | None = None,
    report_epoch: ReportEpoch | None = None,
    shuffle_seed: int = 0,
    precision: str = "fp32",
    cuda_graphs: bool = True,
) -> Iterator[tuple[int, TrainResult]]:
    """Train the ``(config, seed)`` jobs, at most ``slots`` at once; yield ``(index, result)`` as
    each finishes, ``index`` being the job's position in ``jobs``. A job ``(config, seed,
    shuffle_seed)`` shuffles with its own seed instead of the shared ``shuffle_seed``.

    ``jobs`` is consumed lazily: a job is taken when a slot is free (at the start, and at each
    epoch boundary where a trial ended), after the results of the trials that ended there have
    been yielded. So a caller can decide what to train next from what has finished, as an
    Optuna study does with ask-and-tell. Trial ``i`` starts from the weights of
    ``train(config, …, seed=seed)`` and gives what ``train(config, data, epochs, seed=seed,
    shuffle_seed=shuffle_seed, precision=precision)`` gives (to rounding). All configs must
    share the batch size.

    Args:
        report: ``report(index, epoch, val_loss)`` after each epoch of each trial that did not
            diverge; return True to stop that trial (it is then yielded, ``stopped``).
        report_epoch: instead of ``report``, one call per fused epoch with the ``(index, epoch,
            val_loss)`` of every trial in flight that did not diverge; returns the indices to stop.
            For a caller that writes and judges a whole epoch boundary at once (one storage
            transaction instead of one per trial).
        shuffle_seed: seeds the minibatch order shared by all trials (:func:`epoch_permutation`).
        precision: ``fp32``, ``bf16`` or ``tf32``, as in ``train``.
        cuda_graphs: on CUDA, run the steps as CUDA graphs, captured again only when the set of
            trials in flight changes (:mod:`objectives.graphs`); False runs them eagerly.
    """
    check_int(epochs=epochs, slots=slots)
    if report is not None and report_epoch is not None:
        raise ValueError("give report or report_epoch, not both")
    device, dtype = data.device, data.dtype
    check_precision(precision, dtype, device)
    graphed = cuda_graphs and device.type == "cuda"
    n, n_val = data.train_x.shape[0], data.val_x.shape[0]
    source = iter(enumerate(jobs))
    batch_size: int | None = None
    steps_per_epoch = 0
    flight: list[_Trial] = []
    stack: _Stack | None = None
    exhausted = False

    while True:
        joined = False
        while not exhausted and len(flight) < slots:
            try:
                index, (config, seed, *own_shuffle) = next(source)
            except StopIteration:
                exhausted = True
                break
            if batch_size is None:
                batch_size, steps_per_epoch = config.batch_size, math.ceil(n / config.batch_size)
            elif config.batch_size != batch_size:
                raise ValueError(f"trials trained together must share the batch size {batch_size}, "
                                 f"but job {index} has batch_size={config.batch_size}")
            flight.append(_Trial(index, config, seed, LRSchedule(config, steps_per_epoch, epochs),
                                 build_model(seed, device, dtype), shuffle_seed=(own_shuffle or [shuffle_seed])[0]))
            joined = True
        if not flight:
            return
        if joined or stack is None or len(stack.trials) != len(flight):
            if stack is not None:
                stack.steps = None  # the old graphs' memory goes back before the new stack's
            stack = _Stack(flight, stack, device, dtype)
            stack.buffers(n, steps_per_epoch)
            full, tail, warmup = _steps(stack, data, batch_size, precision)
            stack.steps = EagerSteps(full, tail)
        t0 = time.perf_counter()
        stack.perm.copy_(stack.order(n))  # the epoch's inputs: one copy each
        stack.lr_table.copy_(stack.table(steps_per_epoch))
        stack.loss_sum.zero_()
        stack.cursor.zero_()
        with precision_context(device, precision):
            # a new set of trials (rebuilt above in this same pass, so ``warmup`` is its own), captured
            # now that its buffers hold this epoch's inputs, which the warm-up reads
            if graphed and isinstance(stack.steps, EagerSteps):
                stack.steps = StepGraphs(stack.steps.full, stack.steps.tail, warmup, device)
            stack.steps.run(n // batch_size)

            val_sum, correct = eval_sums(stack.forward, data.val_x, data.val_y, precision)
        loss_sum = stack.loss_sum
        # the host's share of the next epoch, done while the GPU still runs this one (asynchronous)
        for t in stack.trials:
            if t.epoch + 1 < epochs:
                t.look_ahead(steps_per_epoch)
        train_l, val_l, acc = torch.stack([loss_sum / n, val_sum / n_val, correct / n_val]).tolist()  # the epoch's one sync
        seconds = time.perf_counter() - t0

        blown: set[int] = set()  # indices of the trials that diverged in this epoch
        for t in stack.trials:
            r = t.row
            t.train.append(train_l[r])
            t.val.append(val_l[r])
            t.acc.append(acc[r])
            t.sec.append(seconds)
            if diverged(train_l[r], val_l[r]):
                blown.add(t.index)
            else:
                t.schedule.epoch_end(val_l[r])
        reports = [(t.index, t.epoch, t.val[-1]) for t in stack.trials if t.index not in blown]
        if report_epoch is not None:
            stops = set(report_epoch(reports)) if reports else set()
        else:
            stops = {index for index, epoch, val in reports if report is not None and report(index, epoch, val)}
        ended: list[tuple[_Trial, bool, bool]] = []  # (trial, diverged, stopped)
        for t in stack.trials:
            if t.index in blown or t.index in stops or t.epoch == epochs:
                ended.append((t, t.index in blown, t.index in stops))
        for t, blew_up, stopped in ended:
            flight.remove(t)
            yield t.index, make_result(
                t.val, t.acc, t.train, t.sec, blew_up, stopped,
                initial_lrs=t.config.initial_lrs(),
                final_lrs={layer: t.lr(layer, t.ahead[0] if t.ahead else t.schedule.factor) for layer in LAYERS},
                model=stack.model(t),
            )


#: ``auto_slots`` never goes above this: past it an H100 step is bound by the matrix products, not by
#: kernel launches, so more trials in flight buy little throughput and cost the sampler feedback
#: (each trial in flight is one the sampler cannot learn from yet).
AUTO_SLOTS_MAX = 64


def _bytes_per_trial(batch_size: int, dtype: torch.dtype) -> int:
    """A generous estimate of one trial's share of the GPU memory ``train_stream`` uses."""
    params = sum(i * o + o for i, o in zip((784, 512, 256), (512, 256, 10)))
    # parameters, gradients, two optimizer states, update temporaries, and the stacks' copy
    # while they are rebuilt
    elements = 9 * params
    elements += batch_size * (784 + 2 * (512 + 256) * 2 + 3 * 10)  # a step's activations and their gradients
    elements += EVAL_CHUNK * (2 * 512 + 2 * 256 + 10)  # a validation chunk
    return elements * torch.tensor([], dtype=dtype).element_size() + 8 * 60_000  # + its own permutation


def auto_slots(device: torch.device, batch_size: int = 128, dtype: torch.dtype = torch.float32,
               cap: int = AUTO_SLOTS_MAX) -> int:
    """How many trials to train at once on ``device``: 1 on the CPU (fusing is correct there but
    not faster), else as many as half the free GPU memory holds, at most ``cap``."""
    if device.type != "cuda":
        return 1
    free, _total = torch.cuda.mem_get_info(device)
    return max(1, min(cap, int(free // 2 // _bytes_per_trial(batch_size, dtype))))


def train_many(
    configs: Sequence[TrainConfig],
    data: MnistData,
    epochs: int,
    report: ReportMany | None = None,
    seeds: Sequence[int] | None = None,
    shuffle_seed: int | Sequence[int] = 0,
    slots: int | None = None,
    precision: str = "fp32",
    cuda_graphs: bool = True,
) -> list[TrainResult]:
    """Train every config of ``configs`` (at most ``slots`` at once, default all); results in
    the order of ``configs``.

    Args:
        configs: the configurations; they must share the batch size.
        data: device-resident MNIST; training runs on its device and dtype.
        epochs: passes over the training set.
        report: ``report(index, epoch, val_loss)`` after each epoch of each running trial; return
            True to stop that trial.
        seeds: initial-weight seeds, one per config (default ``0, 1, …``); trial ``i`` starts from
            the same weights as ``train(configs[i], …, seed=seeds[i])``.
        shuffle_seed: seeds the minibatch order shared by all trials; ``train`` with the same
            ``shuffle_seed`` sees the same order. A sequence gives each config its own (trial
            ``i`` is then ``train(configs[i], …, seed=seeds[i], shuffle_seed=shuffle_seed[i])``).
        slots: how many trials train at once; a slot freed by a finished trial takes the next.
        precision: ``fp32``, ``bf16`` or ``tf32``, as in ``train``.
        cuda_graphs: as in ``train_stream``.
    """
    if len(configs) == 0:
        raise ValueError("configs must not be empty")
    seeds = list(range(len(configs))) if seeds is None else list(seeds)
    if len(seeds) != len(configs):
        raise ValueError(f"need one seed per config, but got {len(seeds)} seeds for {len(configs)} configs")
    shuffles = [shuffle_seed] * len(configs) if isinstance(shuffle_seed, int) else list(shuffle_seed)
    if len(shuffles) != len(configs):
        raise ValueError(f"need one shuffle seed per config, but got {len(shuffles)} for {len(configs)} configs")
    results: list[TrainResult | None] = [None] * len(configs)
    stream = train_stream(zip(configs, seeds, shuffles), data, epochs, slots=slots or len(configs), report=report,
                          precision=precision, cuda_graphs=cuda_graphs)
    for index, result in stream:
        results[index] = result
    return results  # type: ignore[return-value]
