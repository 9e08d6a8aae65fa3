"""`study.run --parallel-trials K`: K trials in flight per worker, trained fused by `train_stream`.

Optuna's ``study.optimize`` runs one trial per thread, so this loop uses ask-and-tell instead:
a trial is asked for a row of the fused trainer that is free or about to be, reports its
validation loss after each of its epochs (the pruner decides on it as usual) and is told once it
ends. ``train_stream`` does the asks and tells while the device trains the next epoch (its
``ahead`` order), so a trial placed at a boundary was sampled knowing every trial finished up
to the boundary before (TPE's constant liar covers the ones in flight): the price of a device
that does not wait for the sampler (``python -m benchmarks.host_overlap``). What ``study.optimize`` does around a trial is done here too: a WAITING retry is asked
first, stale trials of dead workers are failed before each ask, and every trial in flight has
a heartbeat (Optuna records heartbeats only inside ``optimize``), so a killed process leaves
trials that the next run fails and retries, never a trial RUNNING for good.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterator

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from objectives import MnistMLPObjective, TrainConfig, train_stream
from objectives.device import as_out_of_memory
from storage.batch import TrialWrites, storage_of, trial_id, write_trials, write_user_attrs
from study.progress import count_states
from study.pruning import judge_boundary
from study.recovery import INTERRUPTED, Heartbeats, requeue_interrupted, retries_waiting

__all__ = ["more_wanted", "optimize_fused"]


def more_wanted(study: optuna.Study, trials: int, deadline: float = math.inf) -> bool:
    """Whether a worker starts another trial: a retry of a failed one is waiting (it runs even
    past the budget or the deadline, a ``time.monotonic()``), or the study's finished trials and
    the ones running anywhere (the run's other workers, other machines) are short of ``trials``.
    Counting the finished ones only (Optuna's ``MaxTrialsCallback``), each of W workers started
    one more trial as its last one ended: up to W - 1 trials over ``--trials``. Stale trials (a
    dead process's, past the heartbeat's grace period) are failed first, as ``study.optimize``
    does before each trial, so that they are not counted as running."""
    optuna.storages.fail_stale_trials(study)
    counts = count_states(study)
    if counts[TrialState.WAITING] and retries_waiting(study):
        return True
    in_hand = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + counts[TrialState.RUNNING]
    return trials > in_hand and time.monotonic() < deadline


def optimize_fused(
    study: optuna.Study,
    objective: MnistMLPObjective,
    *,
    trials: int,
    slots: int,
    timeout: float | None,
    owner: str,
    attrs: dict[str, object] | None = None,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]],
    stop: Callable[[], bool],
    say: Callable[[str], None] = print,
    on_epoch: Callable[[int, int], None] | None = None,
) -> None:
    """Work on ``study`` with up to ``slots`` trials in flight until it has ``trials`` finished
    (COMPLETE + PRUNED) trials, counting the ones running anywhere; no new trial after
    ``timeout`` seconds or once ``stop()`` is true. ``callbacks`` run on each told trial, as
    ``study.optimize``'s do. A WAITING retry is always run, even past the budget. ``attrs``:
    user attrs every trial records besides its own (the sampler and pruner that made it).

    A trial that another process finishes while it trains (the heartbeat check of a worker that
    found this one silent, after a pause past the grace period; an operator) is dropped at the
    next boundary with one line through ``say``; the others go on. ``on_epoch(number, epoch)``
    hears every trial's epoch boundary (the progress bar).

    Out of GPU memory, the trials in flight fail and the loop goes on with half the slots.
    Any other exception (Ctrl-C, SIGTERM) fails the trials in flight and propagates.
    """
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    storage = storage_of(study)
    in_flight: dict[int, optuna.Trial] = {}  # by the index train_stream gives the trial's job

    def wanted() -> bool:
        return not stop() and more_wanted(study, trials, deadline)

    def jobs() -> Iterator[tuple[TrainConfig, int]]:
        counter = itertools.count()  # train_stream numbers the jobs of each stream from 0
        while True:
            if not wanted():
                return
            trial = study.ask()
            in_flight[next(counter)] = trial
            heartbeats.add(trial_id(trial))
            config, seed, trial_attrs = objective.prepare_trial(trial)
            # which process ran it (diagnosis, orphan detection), its CPU share, and how many trials
            # shared its fused epochs (its seconds_per_epoch is the wall time of one): one write
            write_user_attrs(storage, trial_id(trial), {"worker": owner, "threads": torch.get_num_threads(),
                                                        "parallel_trials": slots, **(attrs or {}), **trial_attrs})
            yield config, seed

    def tell(trial: optuna.Trial, **kwargs: object) -> None:
        heartbeats.discard(trial_id(trial))
        try:
            frozen = study.tell(trial, **kwargs)
        except ValueError as e:  # finished by another process since its last boundary
            if not taken_away(e, trial):
                raise
            say(dropped_line(trial.number))
            return
        for callback in callbacks:
            callback(study, frozen)

    def _fail_all(in_flight: dict[int, optuna.Trial], error: str | None = None) -> None:
        for trial in _drain(in_flight):
            try:
                if error is not None:
                    write_user_attrs(storage, trial_id(trial), {"error": error})
                tell(trial, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001 - the storage may be what failed; the heartbeat then fails it
                pass
        if error == INTERRUPTED:
            try:  # the next run takes them first, as a dead worker's (as the one-trial path does)
                requeue_interrupted(storage, study, owner)
            except Exception:  # noqa: BLE001 - as above
                pass

    def report_epoch(reports: list[tuple[int, int, float]]) -> set[int]:
        """One epoch boundary: every trial's value in one write, every prune decided from one read."""
        writes = TrialWrites()
        ids = {}
        for index, epoch, val_loss in reports:
            ids[trial_id(in_flight[index])] = index
            if on_epoch is not None:
                on_epoch(in_flight[index].number, epoch)
            writes.intermediate_values.append((trial_id(in_flight[index]), epoch, val_loss))
        # after the last epoch there is nothing left to save: the trial is complete
        judge = {trial_id(in_flight[index]) for index, epoch, _ in reports if epoch < objective.epochs}
        pruned = judge_boundary(study, writes.intermediate_values, judge, writes)
        write_trials(storage, writes)
        for id_ in writes.finished_elsewhere & set(ids):  # its writes were dropped: stop training it
            trial = in_flight.pop(ids[id_])
            heartbeats.discard(id_)
            say(dropped_line(trial.number))
            pruned.add(id_)
        return {ids[i] for i in pruned}

    with Heartbeats(storage) as heartbeats, warnings.catch_warnings():
        # ask() warns that heartbeats belong to study.optimize: here Heartbeats records them
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used", category=UserWarning)
        while wanted():
            stream = train_stream(jobs(), objective.data, objective.epochs, slots=slots, report_epoch=report_epoch,
                                  shuffle_seed=objective.seed, precision=objective.precision,
                                  cuda_graphs=objective.cuda_graphs)
            try:
                for index, result in stream:
                    if index not in in_flight:
                        continue  # dropped at a boundary: finished by another process
                    trial = in_flight.pop(index)
                    write_user_attrs(storage, trial_id(trial), objective.result_attrs(result))
                    try:
                        value = objective.outcome(result)
                    except optuna.TrialPruned:
                        tell(trial, state=TrialState.PRUNED)
                    else:
                        tell(trial, values=value)
            except Exception as e:  # out of memory: torch.OutOfMemoryError, the CPU allocator's, one chained
                if as_out_of_memory(e) is None:
                    _fail_all(in_flight)
                    raise
                stream.close()
                if objective.device.type == "cuda":
                    torch.cuda.empty_cache()
                error = f"out of memory on {objective.device} with {slots} trials in flight"
                for trial in _drain(in_flight):
                    # one write; out_of_memory_slots tells the caller's failure count that K trials
                    # failed as one event, which halving answers (5 at once stopped the worker)
                    write_user_attrs(storage, trial_id(trial), {"error": error, "out_of_memory_slots": slots})
                    tell(trial, state=TrialState.FAIL)
                slots = max(1, slots // 2)
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM
                _fail_all(in_flight, INTERRUPTED)
                raise
            except BaseException:
                _fail_all(in_flight)
                raise


def taken_away(e: BaseException, trial: optuna.Trial) -> bool:
    """Whether ``e`` is Optuna refusing to tell ``trial`` because another process finished it."""
    if not str(e).startswith("Cannot tell a "):
        return False
    storage = storage_of(trial.study)
    return storage.get_trial(trial_id(trial)).state.is_finished()


def dropped_line(number: int) -> str:
    return (f"trial {number} was finished by another process while this one trained it (a pause past the "
            "heartbeat's grace period, or an operator): dropped, going on")


def _drain(in_flight: dict[int, optuna.Trial]) -> list[optuna.Trial]:
    trials = list(in_flight.values())
    in_flight.clear()
    return trials
