"""`train(config, data, epochs) -> TrainResult`: one MLP on device-resident MNIST.

A flat loop with no DataLoader: each epoch shuffles with a permutation that is a function of
``(shuffle_seed, epoch)`` only (:func:`epoch_permutation`), takes minibatches out of the
resident tensors, and keeps the running loss on the device; the host reads it once per epoch,
together with the validation loss and accuracy. A step reads its batch (and on CUDA its LRs)
from device buffers at a step counter on the device, so on CUDA it is captured once as a CUDA
graph and replayed (:mod:`objectives.graphs`). The function never sees an Optuna trial: it
calls ``report(epoch, val_loss)``, so the same code trains a fixed config, a trial, or anything
else that wants per-epoch progress.

Measured (``python -m benchmarks.epoch_speed``, batch 128, same process): on an NVIDIA H100 one
epoch with its validation pass takes 0.092 s in fp32 with CUDA graphs against 4.77 s for the
seed's DataLoader loop (52×; eagerly 0.643 s, 7.4×), 0.070 s in tf32 (68×); on a 2-core AMD
EPYC 0.82 s in fp32 against 1.80 s (2.2×, all that fp32 arithmetic allows on that CPU) and
0.41 s with ``precision="bf16"`` (4.4×). The README's "Measured" section has the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from objectives.checks import check_int, check_seed
from objectives.config import TrainConfig
from objectives.data import MnistData
from objectives.evaluation import eval_sums
from objectives.graphs import EagerSteps, StepGraphs
from objectives.model import LAYERS, build_model
from objectives.precision import autocast, check_precision, precision_context
from objectives.result import TrainResult, diverged, make_result
from objectives.schedules import LRSchedule, build_optimizer, set_lr_factor

__all__ = ["epoch_permutation", "train"]

#: Report callback: ``report(epoch, val_loss)`` after each epoch (1-based). Returning True stops
#: training (the result says ``stopped``); raising stops it too, and the exception propagates.
Report = Callable[[int, float], "bool | None"]


def epoch_permutation(n: int, shuffle_seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The minibatch order of ``epoch`` (1-based): a permutation of ``range(n)`` on ``device``.

    It depends on ``(shuffle_seed, epoch)`` alone, not on what ran before, so trials that share
    a ``shuffle_seed`` see the same batches in their epoch e whenever they run it: common random
    numbers, which lower the noise between the trials being compared and let ``train_many``
    start a trial while others are in later epochs. Drawn on the CPU (the same order on every
    device) and copied once per epoch.
    """
    check_seed(shuffle_seed=shuffle_seed)
    seed = int(np.random.SeedSequence([shuffle_seed, epoch]).generate_state(1, dtype=np.uint64)[0])
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm.to(device)


def train(
    config: TrainConfig,
    data: MnistData,
    epochs: int,
    report: Report | None = None,
    seed: int = 0,
    shuffle_seed: int | None = None,
    precision: str = "fp32",
    cuda_graphs: bool = True,
    plateau_losses: Sequence[float] | None = None,
) -> TrainResult:
    """Train a fresh MLP with ``config`` on ``data.train_*`` and validate on ``data.val_*``.

    Args:
        config: the configuration (optimizer, LR, decay, multipliers, batch size).
        data: device-resident MNIST from :func:`load_mnist`; training runs on its device.
        epochs: passes over the training set.
        report: called as ``report(epoch, val_loss)`` after each epoch; return True to stop.
        seed: seeds the initial weights (drawn on the CPU, so the same on every device).
        shuffle_seed: seeds the minibatch order (:func:`epoch_permutation`); defaults to ``seed``.
            Runs with the same ``shuffle_seed`` see the same batches, epoch by epoch.
        precision: ``fp32``; ``bf16`` for mixed precision, or ``tf32`` for TF32 matrix products
            on CUDA (:mod:`objectives.precision`).
        cuda_graphs: on CUDA, run the steps as captured CUDA graphs (:mod:`objectives.graphs`);
            False runs the same steps eagerly (for debugging and comparison). The CPU is always eager.
        plateau_losses: the losses, epoch by epoch, that a ``plateau`` decay reacts to instead of
            this run's validation losses: a run whose "validation" set is the test set (the
            final word) replays the drops its twin saw on the validation images, so the test set
            never steers the schedule.

    A NaN, infinite or exploding (> ``DIVERGENCE_LOSS``) training or validation loss ends the
    run with ``diverged=True``. It is seen at the end of the epoch where it happened (the loss
    is read once per epoch to keep the step loop free of host syncs), so at most one epoch is
    spent on it; that epoch is not reported.
    """
    check_int(epochs=epochs)
    check_seed(seed=seed, **({} if shuffle_seed is None else {"shuffle_seed": shuffle_seed}))
    check_precision(precision, data.dtype, data.device)
    device = data.device
    n, bs = data.train_x.shape[0], config.batch_size
    full_steps, tail = divmod(n, bs)
    steps_per_epoch = full_steps + (tail > 0)
    cuda = device.type == "cuda"

    model = build_model(seed, device, data.dtype)
    initial_lrs = config.initial_lrs()  # lr x multiplier, the nominal LR
    # On CUDA each layer's LR is a device scalar that a step copies from the epoch's LR table
    # (one host-to-device copy per epoch), so a step reads nothing from the host and can be a
    # CUDA graph; float32 whatever the data, which is what torch's fused optimizer kernels read.
    # On the CPU a host float per step costs nothing.
    lr_now = torch.tensor(list(initial_lrs.values()), device=device) if cuda else None
    optimizer = build_optimizer(model, config, lrs=lr_now)
    schedule = LRSchedule(config, steps_per_epoch, epochs)
    shuffle_seed = seed if shuffle_seed is None else shuffle_seed

    # what the steps read and write: allocated once, filled per epoch
    perm = torch.empty(n, dtype=torch.long, device=device)
    lr_table = torch.empty(steps_per_epoch, len(LAYERS), device=device) if cuda else None
    cursor = torch.zeros(1, dtype=torch.long, device=device)  # the step being taken: its row of lr_table
    loss_sum = torch.zeros((), device=device, dtype=data.dtype)
    batches = perm[: full_steps * bs].view(full_steps, bs)

    def step(idx: torch.Tensor) -> None:
        with autocast(device, precision):  # the backward pass follows the forward's dtypes
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if lr_table is not None:
            torch.index_select(lr_table, 0, cursor, out=lr_now.view(1, -1))
        optimizer.step()
        loss_sum.add_(loss.detach(), alpha=idx.shape[0])  # stays on the device
        cursor.add_(1)

    def full_step() -> None:
        step(torch.index_select(batches, 0, cursor).view(bs))

    def tail_step() -> None:
        step(perm[full_steps * bs :])

    val_losses: list[float] = []
    val_accs: list[float] = []
    train_losses: list[float] = []
    epoch_seconds: list[float] = []
    blew_up = stopped = False

    with precision_context(device, precision):
        steps: StepGraphs | EagerSteps = EagerSteps(full_step if full_steps else None, tail_step if tail else None)
        if cuda and cuda_graphs:
            steps = _capture_train_steps(model, optimizer, steps.full, steps.tail, device, perm, lr_table)
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            perm.copy_(epoch_permutation(n, shuffle_seed, epoch, "cpu"))  # the epoch's inputs: one copy each
            loss_sum.zero_()
            cursor.zero_()
            if lr_table is not None:
                lr_table.copy_(_lr_rows(schedule, steps_per_epoch, initial_lrs))
                steps.run(full_steps)
            else:  # the CPU: host float LRs, set before each step
                for s in range(steps_per_epoch):
                    set_lr_factor(optimizer, schedule.factor)
                    full_step() if s < full_steps else tail_step()
                    schedule.step()

            sums = eval_sums(model, data.val_x, data.val_y, precision)
            train_sum, val_sum, correct = torch.cat([loss_sum.reshape(1), sums]).tolist()  # the epoch's one sync
            train_loss, val_loss = train_sum / n, val_sum / data.val_x.shape[0]
            train_losses.append(train_loss)
            val_losses.append(val_loss)
            val_accs.append(correct / data.val_x.shape[0])
            epoch_seconds.append(time.perf_counter() - t0)

            if diverged(train_loss, val_loss):
                blew_up = True
                break
            schedule.epoch_end(val_loss if plateau_losses is None else plateau_losses[epoch - 1])
            if report is not None and report(epoch, val_loss):
                stopped = True
                break

    final_lrs = {layer: lr * schedule.factor for layer, lr in initial_lrs.items()}
    return make_result(val_losses, val_accs, train_losses, epoch_seconds, blew_up, stopped, initial_lrs, final_lrs, model)


def _lr_rows(schedule: LRSchedule, steps: int, initial_lrs: dict[str, float]) -> torch.Tensor:
    """``[steps, layers]``: each layer's LR for the next ``steps`` updates, stepping ``schedule``
    through them (a host tensor, sent in one copy)."""
    lrs = torch.tensor(list(initial_lrs.values()), dtype=torch.float64)
    return torch.tensor(schedule.factors(steps), dtype=torch.float64).unsqueeze(1) * lrs


def _capture_train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, full_step: Callable[[], None] | None,
                         tail_step: Callable[[], None] | None, device: torch.device, perm: torch.Tensor,
                         lr_table: torch.Tensor) -> StepGraphs:
    """Capture ``train``'s steps. The warm-up takes two real steps (torch.optim creates its state
    on the first), so the weights and the optimizer state are put back afterwards: every
    optimizer of the search space starts from zero state (SGD's momentum buffer included: with a
    zero buffer its first update, ``0·m + g``, is exactly torch's first-step copy of ``g``)."""
    weights = [p.detach().clone() for p in model.parameters()]
    perm.copy_(torch.arange(perm.shape[0]))  # any valid indices will do
    lr_table.zero_()  # LR 0: the warm-up's steps move nothing far

    def warmup() -> None:
        for step in (full_step, tail_step):
            if step is not None:
                step()

    graphs = StepGraphs(full_step, tail_step, warmup, device)
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights):
            p.copy_(w)
            p.grad = None
        for state in optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.zero_()
    return graphs
