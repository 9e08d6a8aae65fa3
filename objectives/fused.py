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
(stepping the schedules for the next epoch's LR table, a caller's tells and asks) is done while
the GPU trains the epoch (``ahead``): between epochs the device waits only for the pruning
decisions and the rows' refill (on the CPU, ``python -m benchmarks.host_overlap --device cpu``,
2026-11-30: 15 ms of host time per boundary instead of 317). Measured on an H100 before the
rows were fixed and the update made one formula (``python -m benchmarks.fused_throughput
--device cuda``, 50k images, 2 epochs, 2026-11-26):
56.5 trial-epochs/s at K = 32 against 23.0 eagerly and 10.1 for the one-trial engine
(docs/measurements.md); not re-measured since, no GPU having been lent.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from objectives.checks import check_int, check_seed
from objectives.config import TrainConfig
from objectives.data import MnistData
from objectives.evaluation import eval_sums
from objectives.graphs import EagerSteps, StepGraphs
from objectives.model import LAYERS, build_model
from objectives.precision import check_precision, precision_context
from objectives.result import TrainResult, diverged, make_result
from objectives.schedules import LRSchedule
from objectives.stack import FusedTrial, Stack, stack_steps

__all__ = ["StreamTimes", "train_many", "train_stream"]

#: ``report(index, epoch, val_loss)``: ``index`` is the job's position in the input.
ReportMany = Callable[[int, int, float], "bool | None"]
ReportEpoch = Callable[[list[tuple[int, int, float]]], Iterable[int]]


@dataclass
class StreamTimes:
    """Where a stream's host time went (for benchmarks): ``between`` epochs, from an epoch's one
    sync to the next epoch's launch (on a GPU, time the device waits for the host), and
    ``during`` them, between a launch and the sync (overlapped with the device's work on a GPU;
    on a CPU nothing overlaps: the steps ran before). ``boundaries`` counts the syncs;
    ``taken_during`` and ``taken_between`` the new trials taken (asked, their weights built and
    sent to the device: from pinned memory without blocking, :func:`objectives.model.build_model`)
    while an epoch trained and between epochs."""

    between: float = 0.0
    during: float = 0.0
    boundaries: int = 0
    taken_during: int = 0
    taken_between: int = 0


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
    ahead: bool = True,
    times: StreamTimes | None = None,
) -> Iterator[tuple[int, TrainResult]]:
    """Train the ``(config, seed)`` jobs, at most ``slots`` at once; yield ``(index, result)`` as
    each finishes, ``index`` being the job's position in ``jobs``. A job ``(config, seed,
    shuffle_seed)`` shuffles with its own seed instead of the shared ``shuffle_seed``; a job
    ``(config, seed, shuffle_seed, plateau_losses)`` also drives a plateau decay with those losses,
    epoch by epoch, instead of its validation losses (``train``'s ``plateau_losses``).

    ``jobs`` is consumed lazily, a job when a row is free or about to be: at the start; while an
    epoch trains, for the rows its boundary is sure to free (the trials in their last epoch) and
    as many more as the last boundary's stops; and at a boundary, for free rows still empty. A
    trial's result is yielded while the next epoch trains. So the host's share of a boundary (a
    study's tells, asks and sampling) overlaps the device's work, and a job taken at a boundary
    knows the results up to the one before. With ``ahead=False`` a job is taken only when a row
    is free, after the results of the trials that ended there have been yielded, and the next
    epoch starts after that: a caller then decides what to train next from everything that has
    finished. Trial ``i`` starts from the weights of
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
        ahead: take jobs and yield results while an epoch trains (see above); False: in between.
        times: filled with where the host's time went (:class:`StreamTimes`), for benchmarks.
    """
    check_int(epochs=epochs, slots=slots)
    check_seed(shuffle_seed=shuffle_seed)
    if report is not None and report_epoch is not None:
        raise ValueError("give report or report_epoch, not both")
    device, dtype = data.device, data.dtype
    check_precision(precision, dtype, device)
    graphed = cuda_graphs and device.type == "cuda"
    n, n_val = data.train_x.shape[0], data.val_x.shape[0]
    source = iter(enumerate(jobs))
    batch_size = steps_per_epoch = 0  # from the first job
    flight: list[FusedTrial] = []
    reserve: collections.deque[FusedTrial] = collections.deque()  # taken ahead, for the rows the next boundary frees
    pending: list[tuple[int, TrainResult]] = []  # ended at the last boundary, not yet yielded
    expect = 0  # rows the next boundary frees: trials in their last epoch, and as many stops as the last boundary had
    stack: Stack | None = None
    exhausted = False
    synced: float | None = None  # when the last epoch's losses were read back

    def take(count: int) -> list[FusedTrial]:
        """Up to ``count`` new trials from ``jobs`` (fewer once it is exhausted)."""
        nonlocal exhausted, batch_size, steps_per_epoch
        out: list[FusedTrial] = []
        while not exhausted and len(out) < count:
            try:
                index, (config, seed, *own) = next(source)
            except StopIteration:
                exhausted = True
                break
            check_seed(**{f"jobs[{index}]'s seed": seed}, **({f"jobs[{index}]'s shuffle_seed": own[0]} if own else {}))
            if not batch_size:
                batch_size, steps_per_epoch = config.batch_size, math.ceil(n / config.batch_size)
            elif config.batch_size != batch_size:
                raise ValueError(f"trials trained together must share the batch size {batch_size}, "
                                 f"but job {index} has batch_size={config.batch_size}")
            out.append(FusedTrial(index, config, seed, LRSchedule(config, steps_per_epoch, epochs),
                                  build_model(seed, device, dtype), shuffle_seed=(own or [shuffle_seed])[0],
                                  plateau_losses=own[1] if len(own) > 1 else None))
        return out

    while True:
        if not ahead:  # the ended trials' results first, so the next jobs can depend on them
            yield from pending
            pending.clear()
        free = (slots if stack is None else stack.k) - len(flight)
        joined = [reserve.popleft() for _ in range(min(free, len(reserve)))]
        if stack is None or not ahead or not (flight or joined):
            # the first wave, the in-between order, or nothing else to train: taken now. Ahead, a
            # row freed beyond what was taken in advance idles for one epoch instead: its job is
            # taken while that epoch trains (asking a trial costs the host more than a row's
            # share of an epoch costs the device)
            new = take(free - len(joined))
            joined += new
            if times is not None:
                times.taken_between += len(new)
        flight += joined
        if not flight:
            yield from pending
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
        if times is not None and synced is not None:
            times.between += time.perf_counter() - synced
        t0 = time.perf_counter()
        try:
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
        except Exception:
            yield from pending  # the trials that ended before the failure keep their results
            raise
        loss_sum = stack.loss_sum
        # the host's share of the next epoch, done while the GPU still runs this one (asynchronous):
        # stepping the schedules, the last boundary's results (their trials told, on a study), and
        # the jobs for the rows the next boundary will free (their trials asked and sampled)
        launched = time.perf_counter()
        for t in stack.trials:
            if t.epoch + 1 < epochs:
                t.look_ahead(steps_per_epoch)
        if ahead:
            yield from pending
            pending.clear()
            # for the rows idle now and the ones the next boundary frees: the trials in their last
            # epoch, and as many stops as the last boundary had
            wanted = stack.k - len(flight) + sum(t.epoch + 1 == epochs for t in flight) + expect
            new = take(min(wanted, stack.k) - len(reserve))
            reserve.extend(new)
            if times is not None:
                times.taken_during += len(new)
        if times is not None:
            times.during += time.perf_counter() - launched
        train_l, val_l, counts = torch.stack([loss_sum / n, val_sum / n_val, correct]).tolist()  # the epoch's one sync
        acc = [c / n_val for c in counts]  # the error count divided on the host in float64, as train does
        # the epoch's wall time; on a CPU its work was done at the launch, before the caller's share
        seconds = (launched if device.type == "cpu" else time.perf_counter()) - t0
        synced = time.perf_counter()
        if times is not None:
            times.boundaries += 1

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
        expect = sum(blew_up or stopped for _, blew_up, stopped in ended)
        for t, blew_up, stopped in ended:
            flight.remove(t)
            result = make_result(
                t.val, t.acc, t.train, t.sec, blew_up, stopped,
                initial_lrs=t.config.initial_lrs(),
                final_lrs={layer: t.lr(layer, t.ahead[0] if t.ahead else t.schedule.factor) for layer in LAYERS},
                model=stack.model(t),  # a copy, ordered on the device before the row's next trial
            )
            stack.free(t)  # its row is idle until a new trial is placed in it
            pending.append((t.index, result))


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
    check_seed(**{f"seeds[{i}]": s for i, s in enumerate(seeds)})
    if not hasattr(shuffle_seed, "__iter__"):  # one for all (an int; anything else is named by the check)
        check_seed(shuffle_seed=shuffle_seed)
        shuffles = [shuffle_seed] * len(configs)
    else:
        shuffles = list(shuffle_seed)
        check_seed(**{f"shuffle_seed[{i}]": s for i, s in enumerate(shuffles)})
    if len(shuffles) != len(configs):
        raise ValueError(f"need one shuffle seed per config, but got {len(shuffles)} for {len(configs)} configs")
    results: list[TrainResult | None] = [None] * len(configs)
    stream = train_stream(zip(configs, seeds, shuffles), data, epochs, slots=max(1, len(configs)) if slots is None else slots,
                          report=report,
                          precision=precision, cuda_graphs=cuda_graphs)
    for index, result in stream:
        results[index] = result
    return results  # type: ignore[return-value]
