"""The processes that work on a study: one worker's loop, and the pool of ``--workers`` processes.

A worker trains trials until the study has ``--trials`` finished ones: one at a time through
``study.optimize``, or ``--parallel-trials`` K at once through the fused loop
(:mod:`study.parallel`). The pool starts its workers with ``spawn`` (CUDA cannot be forked),
relays Ctrl-C to them as one SIGTERM each, and when a worker dies finishes its work itself
(:mod:`study.recovery`), so a study never ends short of its target with a trial RUNNING.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import warnings
import time

import optuna
import torch
from optuna.trial import TrialState

from objectives import MnistMLPObjective
from objectives.memory import auto_slots
from study.choices import make_pruner, make_sampler
from study.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_STORAGE, set_threads
from study.experiment import Settings, study_storage
from study.parallel import dropped_line, more_wanted, optimize_fused, taken_away
from study.progress import FINISHED, ProgressBar, TrialLog
from storage.batch import trial_id, write_user_attrs
from study.interrupt import freeze_imports, interrupts_held, interrupts_taken, own_the_process, raise_interrupt
from study.recovery import INTERRUPTED, owner, requeue_interrupted, settle_orphans, storage_failed

__all__ = ["AUTO_SHARE_OF_TRIALS", "WorkerError", "finished", "optimize", "raise_interrupt", "run_workers",
           "trials_in_flight", "worker_device"]


def worker_device(s: Settings, worker: int) -> str:
    """Spread workers over the GPUs when the device is not pinned to one."""
    if s.device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return f"cuda:{worker % torch.cuda.device_count()}"
    return s.device


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class WorkerError(RuntimeError):
    """A worker gave up (e.g. every trial fails); exit code 1."""


class _StopAfterFailures:
    """Optuna callback: stop after ``limit`` failed trials in a row (e.g. each one out of memory),
    so that failures, which do not count towards the budget, cannot loop forever."""

    def __init__(self, limit: int = 5) -> None:
        self.limit, self.in_a_row, self.last = limit, 0, ""

    @property
    def tripped(self) -> bool:
        return self.in_a_row >= self.limit

    def record(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != TrialState.FAIL:
            self.in_a_row = 0
            return
        if trial.user_attrs.get("out_of_memory_slots", 1) > 1:
            return  # K trials in flight out of memory at once: the fused loop halves K and goes on
        self.in_a_row += 1
        self.last = str(trial.user_attrs.get("error", "unknown error"))

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.record(study, trial)
        if self.tripped:
            study.stop()  # only valid inside study.optimize; the fused loop asks `tripped` instead


class _StopOnceInHand:
    """Optuna callback: stop once no more trials are wanted (:func:`study.parallel.more_wanted`:
    the finished trials and the ones running anywhere reach the budget, and no retry waits)."""

    def __init__(self, trials: int) -> None:
        self.trials = trials

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not more_wanted(study, self.trials):
            study.stop()


#: ``--parallel-trials auto`` keeps at most this share of the trials still to run in flight at once
AUTO_SHARE_OF_TRIALS = 1 / 4


def trials_in_flight(s: Settings, device: torch.device, study: optuna.Study) -> int:
    """Trials in flight per worker: ``--parallel-trials``, or for ``auto`` the fewest of what half
    the free GPU memory holds (1 on the CPU, at most AUTO_SLOTS_MAX) and a quarter of the trials
    still to run, shared between the workers.

    Why a quarter: a trial in flight is one the sampler and the pruner cannot learn from yet. The
    first K trials are sampled knowing no result (for TPE, random draws), and the pruner judges
    the first wave only against itself. On an H200 a 100-trial study took 160 s with 64 in flight
    and 109 s with 32; a quarter keeps three quarters of the budget for informed sampling.
    """
    if s.parallel_trials != "auto":
        return int(s.parallel_trials)
    memory = auto_slots(device, s.batch_size)
    left = max(1, s.trials - finished(study))
    return max(1, min(memory, int(left * AUTO_SHARE_OF_TRIALS) // s.workers))


def optimize(s: Settings, worker: int, prefix: str = "", bar: ProgressBar | None = None) -> None:
    """Work on the study until it has ``s.trials`` finished trials (or the timeout passes).

    Retries queued for dead workers' trials (WAITING) are run first, even when the budget is
    already reached, so that a crash never leaves a trial without its retry.
    """
    storage = study_storage(s)
    objective = MnistMLPObjective(
        s.epochs, device=worker_device(s, worker), data_dir=s.data_dir,
        train_samples=s.train_samples, batch_size=s.batch_size, seed=s.seed, space=s.space,
        precision=s.precision, cuda_graphs=s.cuda_graphs, metric=s.metric,
    )
    study = optuna.load_study(study_name=s.study_name, storage=storage)
    slots = trials_in_flight(s, objective.device, study)
    study.sampler = make_sampler(s.sampler, s.seed)  # trial n draws from (seed, n): see make_sampler
    study.pruner = make_pruner(s.pruner, s.epochs, in_flight=slots > 1)
    if not more_wanted(study, s.trials):
        return
    objective.data  # noqa: B018 - load once, before the first trial, so no trial pays for it
    freeze_imports()  # every module a trial needs is imported now (torchvision's too, with the data)
    me = owner()
    storage.claim_as = me  # each trial this process sets RUNNING names it at once (see requeue_interrupted)

    current: list[optuna.Trial] = []  # the trial run_trial works on, for taken_away

    def run_trial(trial: optuna.Trial) -> float:
        current[:] = [trial]
        try:
            # a signal lands here, in the trial (one held since the last trial's end as this
            # starts): Optuna's heartbeat thread for it runs, and Optuna's `with` block stops it
            with interrupts_taken():
                # which process ran it (diagnosis, orphan detection), its CPU share (explains its
                # seconds), what sampled and judged it: one write
                write_user_attrs(storage, trial_id(trial), {"worker": me, "threads": torch.get_num_threads(), **made_by})
                return objective(trial)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: said in the trial (Optuna then fails it), queued again below
            write_user_attrs(storage, trial_id(trial), {"error": INTERRUPTED})
            raise

    def say(line: str) -> None:
        if bar is not None:
            bar.write(f"{prefix}{line}")
        else:
            print(f"{prefix}{line}", file=sys.stderr, flush=True)

    on_epoch = bar.epoch if bar is not None else None
    if on_epoch is not None:  # one trial at a time: the bar hears each epoch through the objective's report
        reported = objective.report

        def report(trial: optuna.Trial, epoch: int, val_loss: float) -> bool:
            on_epoch(trial.number, epoch)
            return reported(trial, epoch, val_loss)

        objective.report = report  # type: ignore[method-assign]

    guard = _StopAfterFailures()
    made_by = {"sampler": s.sampler, "pruner": s.pruner}
    if slots > 1:
        optimize_fused(study, objective, trials=s.trials, slots=slots, timeout=s.timeout, owner=me, attrs=made_by,
                       callbacks=[TrialLog(s.trials, prefix, bar), guard.record], stop=lambda: guard.tripped,
                       say=say, on_epoch=on_epoch)
    else:
        deadline = None if s.timeout is None else time.monotonic() + s.timeout
        try:
            # a signal lands in a trial's objective (run_trial), else as the loop ends
            with interrupts_held():
                while True:
                    try:
                        study.optimize(
                            run_trial,
                            timeout=None if deadline is None else max(0.0, deadline - time.monotonic()),
                            catch=(torch.OutOfMemoryError,),  # one trial out of GPU memory: that trial fails, the study goes on
                            callbacks=[
                                _StopOnceInHand(s.trials),
                                TrialLog(s.trials, prefix, bar),
                                guard,
                            ],
                        )
                        break
                    except ValueError as e:  # Optuna's "Cannot tell a FAIL trial.": see taken_away
                        if not current or not taken_away(e, current[0]):
                            raise
                        say(dropped_line(current[0].number))
                        current.clear()
        except KeyboardInterrupt:
            with interrupts_held():  # a second signal does not cut the requeueing short
                requeue_interrupted(storage, study, me)
            raise
    if guard.tripped:
        raise WorkerError(f"{guard.in_a_row} trials in a row failed (last: {guard.last}); stopping this worker")


class _RelayedBar:
    """What a worker process tells the parent's progress bar (``--workers`` on a terminal): its
    lines, its trials' epoch boundaries and ends, through a queue that the parent reads."""

    def __init__(self, queue: multiprocessing.Queue) -> None:
        self.queue = queue

    def write(self, line: str) -> None:
        self.queue.put(("line", line))

    def epoch(self, number: int, epoch: int) -> None:
        self.queue.put(("epoch", number, epoch))

    def update(self, trials: list, ended: int | None = None) -> None:
        self.queue.put(("ended", ended))


def _relay(queue: multiprocessing.Queue, bar: ProgressBar, study: optuna.Study, timeout: float) -> None:
    """Show on ``bar`` what the workers sent, for up to ``timeout`` seconds."""
    import queue as queues

    try:
        message = queue.get(timeout=timeout)
    except queues.Empty:
        return
    while True:
        kind, *rest = message
        if kind == "line":
            bar.write(rest[0])
        elif kind == "epoch":
            bar.epoch(*rest)
        else:  # a trial ended: the study's counts and best, read once
            bar.update(study.get_trials(deepcopy=False), ended=rest[0])
        try:
            message = queue.get_nowait()
        except queues.Empty:
            return


def _worker_main(s: Settings, worker: int, relay: multiprocessing.Queue | None = None) -> None:
    """Entry point of a ``--workers`` child process; ``relay``: the parent's bar, on a terminal."""
    # The parent relays Ctrl-C as one SIGTERM; a terminal's SIGINT to the whole group is ignored
    # here so that a trial is not interrupted twice while it is being marked FAIL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, raise_interrupt)
    own_the_process()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # as the parent sets them (a spawned process starts with Python's own filters): Optuna's
    # ExperimentalWarning for the fused path's APIs was printed at every new trial, over the bar
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    set_threads(s.workers, s.threads)  # the workers share the cores instead of each taking all of them
    bar = _RelayedBar(relay) if relay is not None else None
    started = (f"w{worker} started: process {os.getpid()}, {torch.get_num_threads()} thread(s), device "
               f"{worker_device(s, worker)}")
    if bar is not None:
        bar.write(started)
    else:
        print(started, flush=True)
    try:
        optimize(s, worker, prefix=f"w{worker} ", bar=bar)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except WorkerError as e:
        print(f"error: worker {worker}: {e}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except Exception as e:  # noqa: BLE001 - the storage failing is one line; anything else is a bug
        if not storage_failed(s, e, f"worker {worker}: "):
            raise
        sys.exit(EXIT_STORAGE)


def run_workers(s: Settings, bar: ProgressBar | None = None) -> int:
    """Start ``s.workers`` worker processes and wait for them; with ``bar`` (a terminal) their lines
    and progress come to this process, which draws the one bar for all."""
    freeze_imports()  # this process trains nothing: its imports are done
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    relay = ctx.Queue() if bar is not None else None
    procs = [ctx.Process(target=_worker_main, args=(s, i, relay), name=f"study-worker-{i}") for i in range(s.workers)]
    for proc in procs:
        proc.start()
    interrupted = False
    try:
        if relay is not None and bar is not None:
            study = optuna.load_study(study_name=s.study_name, storage=study_storage(s))
            while any(proc.is_alive() for proc in procs):
                _relay(relay, bar, study, timeout=0.5)
            _relay(relay, bar, study, timeout=0.1)  # the last lines
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        interrupted = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the child marks its trial FAIL and exits
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    codes = [proc.exitcode for proc in procs]
    if interrupted or EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    if EXIT_STORAGE in codes:  # each such worker said why on its own line
        return EXIT_STORAGE
    killed = [i for i, code in enumerate(codes) if code is not None and code < 0]
    failed = [f"worker {i} exited with {code}" for i, code in enumerate(codes) if code not in (0, None) and i not in killed]
    if failed:
        print(f"error: {'; '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    if killed:
        # The others carried on; what the dead ones left (a RUNNING trial, its retry, budget) is
        # finished here, so the study never ends with a trial RUNNING or short of its target.
        names = ", ".join(f"worker {i} (signal {-codes[i]})" for i in killed)
        print(f"warning: {names} died; finishing its work here", file=sys.stderr, flush=True)
        settle_orphans(s)
        optimize(s, s.workers, prefix="w* ")
    return EXIT_OK
