"""`train_many` / `train_stream`: many configurations of the MLP trained in the same kernels.

The trials in flight are rows of one stacked parameter buffer (:mod:`objectives.stack`); every
step runs one batched matrix product per layer for all of them and the five optimizers' update
written for per-trial LRs (:mod:`objectives.fused_optim`, checked against torch.optim: in
float64 on the CPU, ``train_many`` gives the per-epoch validation losses and final weights of K
separate ``train`` runs to 1e-9, refilled slots included, ``tests/test_fused.py``). The schedules
are the same :class:`LRSchedule` objects as in ``train``, one per trial, plateau fed with the
trial's own validation loss; at the start of each epoch the host steps them through the epoch
and sends the whole LR table to the device in one copy, so the step loop has no host sync and no
per-step host-to-device copy.

Every trial shuffles with :func:`epoch_permutation` of one shared ``shuffle_seed`` (common
random numbers), so its epoch e sees the same batches as ``train`` with that seed, whenever it
runs. A trial ends at an epoch boundary (last epoch, its report asked to stop, or its loss
diverged); its slot is then refilled with the next job, which starts at its own epoch 1 with its
own schedule while the others go on, each slot gathering its own minibatch. The stack has the
same K rows for the whole stream: an ended trial's row goes idle and the next job is written
into it in place, so the buffers and the step functions (and their CUDA graphs) are built once.

On CUDA a step of all the rows is one CUDA graph (:mod:`objectives.graphs`), captured in the
stack's first epoch and replayed for every step of the stream. The host's per-epoch share
(stepping the schedules for the next epoch's LR table) is done while the GPU still trains the
current epoch. Measured on an H100 before the rows were fixed and the update made one formula
(``python -m benchmarks.fused_throughput --device cuda``, 50k images, 2 epochs, 2026-11-26):
56.5 trial-epochs/s at K = 32 against 23.0 eagerly and 10.1 for the one-trial engine
(docs/measurements.md); not re-measured since, no GPU having been lent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch

from objectives.checks import check_int
from objectives.config import TrainConfig
from objectives.data import MnistData
from objectives.evaluation import eval_sums
from objectives.graphs import EagerSteps, StepGraphs
from objectives.model import LAYERS, build_model
from objectives.precision import check_precision, precision_context
from objectives.result import TrainResult, diverged, make_result
from objectives.schedules import LRSchedule
from objectives.stack import FusedTrial, Stack, stack_steps

__all__ = ["train_many", "train_stream"]

#: ``report(index, epoch, val_loss)``: ``index`` is the job's position in the input.
ReportMany = Callable[[int, int, float], "bool | None"]
ReportEpoch = Callable[[list[tuple[int, int, float]]], Iterable[int]]


def train_stream(
    jobs: Iterable[tuple[TrainConfig, int] | tuple[TrainConfig, int, int] | tuple[TrainConfig, int, int, Sequence[float]]],
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
    shuffle_seed)`` shuffles with its own seed instead of the shared ``shuffle_seed``; a job
    ``(config, seed, shuffle_seed, plateau_losses)`` also drives a plateau decay with those losses,
    epoch by epoch, instead of its validation losses (``train``'s ``plateau_losses``).

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
        cuda_graphs: on CUDA, run the steps as CUDA graphs, captured once: the stack keeps its K
            rows for the whole stream and new trials are written into free rows in place
            (:mod:`objectives.graphs`, :class:`objectives.stack.Stack`); False runs them eagerly.
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
    flight: list[FusedTrial] = []
    stack: Stack | None = None
    exhausted = False

    while True:
        joined: list[FusedTrial] = []
        while not exhausted and len(flight) < (slots if stack is None else stack.k):
            try:
                index, (config, seed, *own) = next(source)
            except StopIteration:
                exhausted = True
                break
            if batch_size is None:
                batch_size, steps_per_epoch = config.batch_size, math.ceil(n / config.batch_size)
            elif config.batch_size != batch_size:
                raise ValueError(f"trials trained together must share the batch size {batch_size}, "
                                 f"but job {index} has batch_size={config.batch_size}")
            trial = FusedTrial(index, config, seed, LRSchedule(config, steps_per_epoch, epochs),
                               build_model(seed, device, dtype), shuffle_seed=(own or [shuffle_seed])[0],
                               plateau_losses=own[1] if len(own) > 1 else None)
            flight.append(trial)
            joined.append(trial)
        if not flight:
            return
        if stack is None:  # K rows for the whole stream: the first wave's size (at most slots)
            stack = Stack(len(flight), device, dtype)
            stack.buffers(n, steps_per_epoch)
            # two ways to read the batches (one order for all rows, or one per row), each built,
            # and captured on CUDA, once, when first needed: at most 4 graphs per stream
            ways: dict[bool, tuple[StepGraphs | EagerSteps, Callable[[], None]]] = {}
        for trial in joined:  # into free rows, in place: the buffers and the steps stay the same
            stack.place(trial)
        shared = stack.shared()
        if shared not in ways:
            full, tail, warmup = stack_steps(stack, data, batch_size, precision, shared)
            ways[shared] = (EagerSteps(full, tail), warmup)
        steps, warmup = ways[shared]
        t0 = time.perf_counter()
        (stack.shared_perm if shared else stack.row_perm).copy_(stack.order(n))  # the epoch's inputs: one copy each
        stack.lr_table.copy_(stack.table(steps_per_epoch))
        stack.loss_sum.zero_()
        stack.cursor.zero_()
        with precision_context(device, precision):
            # the stack's steps, captured once, in its first epoch, now that its buffers hold this
            # epoch's inputs, which the warm-up reads
            if graphed and isinstance(steps, EagerSteps):
                steps = StepGraphs(steps.full, steps.tail, warmup, device)
                ways[shared] = (steps, warmup)
            steps.run(n // batch_size)

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
                t.schedule.epoch_end(val_l[r] if t.plateau_losses is None else t.plateau_losses[t.epoch - 1])
        reports = [(t.index, t.epoch, t.val[-1]) for t in stack.trials if t.index not in blown]
        if report_epoch is not None:
            stops = set(report_epoch(reports)) if reports else set()
        else:
            stops = {index for index, epoch, val in reports if report is not None and report(index, epoch, val)}
        ended: list[tuple[FusedTrial, bool, bool]] = []  # (trial, diverged, stopped)
        for t in stack.trials:
            if t.index in blown or t.index in stops or t.epoch == epochs:
                ended.append((t, t.index in blown, t.index in stops))
        for t, blew_up, stopped in ended:
            flight.remove(t)
            result = make_result(
                t.val, t.acc, t.train, t.sec, blew_up, stopped,
                initial_lrs=t.config.initial_lrs(),
                final_lrs={layer: t.lr(layer, t.ahead[0] if t.ahead else t.schedule.factor) for layer in LAYERS},
                model=stack.model(t),
            )
            stack.free(t)  # its row is idle until a new trial is placed in it
            yield t.index, result


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
    stream = train_stream(zip(configs, seeds, shuffles), data, epochs, slots=max(1, len(configs)) if slots is None else slots,
                          report=report,
                          precision=precision, cuda_graphs=cuda_graphs)
    for index, result in stream:
        results[index] = result
    return results  # type: ignore[return-value]
