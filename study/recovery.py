"""Crash recovery, in one place: no trial is left RUNNING for good, and none is lost.

What a dead process leaves, and who settles it:

- A trial whose process died (killed, out of memory, the machine lost) stops sending heartbeats.
  Every storage study.run opens has them (:func:`storage.open_storage`: an interval, a grace
  period of twice that, and Optuna's ``RetryHeartbeatStaleTrialCallback``), so once its heartbeat
  is stale any process working on the study marks it FAIL and queues it again once (WAITING),
  for the next worker to run. ``study.optimize`` sends the heartbeats of its one trial;
  :class:`Heartbeats` sends those of the fused engine's trials in flight.
- A process of this host that no longer exists is not waited for: :func:`settle_orphans` fails
  and retries its trials at the start of a run, and the worker pool after a worker died
  (:mod:`study.workers`). So does a trial that no process claimed (killed between the storage
  setting it RUNNING and writing its ``worker`` attr, in the same call), after the grace period.
- The storage failing mid-run (:func:`storage_failed`): one line, and this process's trials
  are failed and retried if the storage still lets us, else the next run settles them.
- Ctrl-C or SIGTERM: the trials in flight are told FAIL by the loops themselves (or by
  :func:`requeue_interrupted`, where the signal came between two steps of theirs) and queued
  again once.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

import optuna
from optuna.trial import TrialState

from storage import hide_password, storage_failure
from storage import batch
from study.experiment import Settings, study_storage

__all__ = ["retries_waiting", "INTERRUPTED", "Heartbeats", "fail_and_retry", "owner", "requeue_interrupted", "running", "settle_orphans",
           "storage_failed"]


def _machine() -> str:
    """This host and, on Linux, its PID namespace: two containers with host networking share the
    hostname, but a PID of one means nothing in the other (``host/pidns-INODE``)."""
    try:
        return f"{socket.gethostname()}/pidns-{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # no /proc (macOS): the hostname alone
        return socket.gethostname()


def owner() -> str:
    """This process, as a trial's ``worker`` attr names it: ``host/pidns-INODE:pid`` (how orphans
    are found: only a process of the same host and PID namespace can tell that it is gone)."""
    return f"{_machine()}:{os.getpid()}"


class Heartbeats:
    """Records the heartbeat of every trial in flight, every ``interval`` seconds, in a thread
    (Optuna's own ``HeartbeatThread`` watches one trial and runs only inside ``optimize``)."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self._storage = storage
        # RDBStorage has heartbeats (open_storage always sets an interval); other storages have none
        get_interval = getattr(storage, "get_heartbeat_interval", None)
        self._interval = get_interval() if get_interval is not None else None
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def add(self, trial_id: int) -> None:
        if self._interval is None:
            return
        self._storage.record_heartbeat(trial_id)  # at once: the trial is never without one
        with self._lock:
            self._ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                ids = sorted(self._ids)
            for trial_id in ids:
                try:  # open_storage's never raises; any other storage's error must not end the thread
                    self._storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - the next beat tries again
                    pass

    def __enter__(self) -> Heartbeats:
        if self._interval is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def _orphans(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials started by a process of this host and PID namespace that no longer exists
    (a ``worker`` of the plain hostname was written before namespaces were told apart: as then)."""
    here = {_machine(), socket.gethostname()}
    out = []
    for trial in running(study):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host in here and pid.isdigit() and not _alive(int(pid)):
            out.append(trial)
    return out


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this PID namespace is running. A zombie is not: it has exited
    and its parent has not collected it yet. Workers whose parent was killed with them are
    collected by the machine's init, here about 2 s later, and a rerun started at once found
    them "alive" and left a trial they had not yet heartbeat RUNNING for good (2026-12-07)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]  # after "(comm)", which may hold spaces
    except (OSError, IndexError):
        return True  # no /proc: kill(0) is all there is
    return state not in ("Z", "X")


def _unclaimed(study: optuna.Study) -> set[int]:
    """Numbers of the RUNNING trials that no process has claimed (no ``worker`` attr yet)."""
    return {t.number for t in running(study) if "worker" not in t.user_attrs}


def fail_and_retry(storage: optuna.storages.RDBStorage, study: optuna.Study,
                   trials: list[optuna.trial.FrozenTrial]) -> None:
    """Mark ``trials`` FAIL (those not already) and queue each again once, as Optuna's
    ``fail_stale_trials`` does for a stale heartbeat (the same callback, so a retry is linked to
    its trial the same way)."""
    failed = []
    for trial in trials:
        if trial.state == TrialState.FAIL:
            failed.append(batch.trial_id(trial))
            continue
        try:
            if storage.set_trial_state_values(batch.trial_id(trial), TrialState.FAIL):
                failed.append(batch.trial_id(trial))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process failed it first (its heartbeat went stale) and queued its retry
    retry = storage.get_heartbeat_stale_trial_callback()
    for trial_id in failed:
        retry(study, storage.get_trial(trial_id))


#: The ``error`` of a trial that Ctrl-C or SIGTERM ended: it is queued again once, for the next run.
INTERRUPTED = "interrupted"


def retries_waiting(study: optuna.Study) -> int:
    """How many WAITING trials are retries of failed ones (``failed_trial``, as Optuna's heartbeat
    check and :func:`fail_and_retry` queue them), which run even past the budget; a new study's
    queued start (:func:`study.experiment.queue_start`) is not, and counts against it."""
    return sum("failed_trial" in t.system_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _own_unretried(study: optuna.Study, me: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of process ``me`` that have no retry queued yet."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    return [t for t in trials if t.user_attrs.get("worker") == me and t.number not in retried]


def requeue_interrupted(storage: optuna.storages.BaseStorage, study: optuna.Study, me: str) -> None:
    """Queue again once (WAITING, the next run takes it first) each trial of process ``me`` that
    an interruption ended as FAIL, as a dead worker's trial is.

    Where the signal lands decides what the trial looks like: inside the objective, it is FAIL
    with ``error`` "interrupted"; inside ``study.ask`` (the sampler drawing it) or between ``ask``
    and the objective, it stayed RUNNING (Optuna fails only what its objective raises), and is
    failed as interrupted here; as the objective starts, before it can say why, Optuna failed it
    with no ``error``: the last trial this process started (the storage's ``last_started``, one
    trial at a time) is then taken as interrupted. The storage claimed each for ``me`` when it set
    it RUNNING (``claim_as``); one still unclaimed is claimed here."""
    # Optuna wraps an RDBStorage in a cache (its _backend): the records are the RDBStorage's
    backend = storage if hasattr(storage, "started_here") else getattr(storage, "_backend", None)
    for trial_id in sorted(getattr(backend, "started_here", ())):
        try:
            if storage.get_trial(trial_id).state == TrialState.RUNNING:
                batch.write_user_attrs(storage, trial_id, {"worker": me, "error": INTERRUPTED})
                storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # finished meanwhile by another process
    last = getattr(backend, "last_started", None)
    fail_and_retry(storage, study, [t for t in _own_unretried(study, me) if t.state == TrialState.FAIL and (
        t.user_attrs.get("error") == INTERRUPTED or ("error" not in t.user_attrs and batch.trial_id(t) == last))])


def settle_orphans(s: Settings) -> None:
    """Fail the trials that dead processes left RUNNING, and queue each again once (as WAITING,
    for the next worker to run).

    Optuna fails a dead worker's trial once its heartbeat is stale, but never a trial whose
    process died before recording its first heartbeat: it has none. So this does not wait for
    heartbeats. A trial whose ``worker`` is a process of this host that no longer exists is
    failed at once. A trial that no process has claimed (the storage writes ``worker`` as it sets
    the trial RUNNING, so only a process killed in between leaves one) is failed if it is still
    unclaimed after the grace period. Trials of live processes and of other hosts are left to
    their heartbeats.
    """
    storage = study_storage(s)
    study = optuna.load_study(study_name=s.study_name, storage=storage)
    unclaimed = _unclaimed(study)
    if unclaimed:
        grace = storage.grace_period
        print(f"waiting up to {grace} s for trial(s) {', '.join(map(str, sorted(unclaimed)))} "
              "(RUNNING, but claimed by no process) to be claimed", flush=True)
        deadline = time.monotonic() + grace
        while unclaimed and time.monotonic() < deadline:
            time.sleep(min(1.0, grace / 2))
            unclaimed &= _unclaimed(study)
    dead = _orphans(study) + [t for t in running(study) if t.number in unclaimed]
    if dead:
        print(f"trial(s) {', '.join(str(t.number) for t in dead)} were left RUNNING by a dead process: "
              "marked FAIL and queued again once", flush=True)
        fail_and_retry(storage, study, dead)


def interrupted_by_storage(study: optuna.Study, me: str) -> list[optuna.trial.FrozenTrial]:
    """The trials process ``me`` had in flight when its storage failed: still RUNNING, or already
    told FAIL on the way out (Optuna's ``_run_trial`` does, and so does the fused loop), with no
    reason recorded (an out-of-memory failure has one) and no retry queued yet."""
    return [t for t in _own_unretried(study, me)
            if t.state == TrialState.RUNNING or (t.state == TrialState.FAIL and "error" not in t.user_attrs)]


def storage_failed(s: Settings, e: Exception, who: str = "") -> bool:
    """Whether ``e`` is the storage failing mid-run. If it is: one line naming the storage and the
    database's reason (``who``: which process), and the trials this process left RUNNING are
    failed and queued again once, as a dead worker's are, if the storage still lets us (else the
    next run settles them as orphans)."""
    reason = storage_failure(e)
    if reason is None:
        return False
    print(f"error: {who}storage {hide_password(s.storage)} failed during the run: {reason}", file=sys.stderr)
    try:
        storage = study_storage(s)
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        fail_and_retry(storage, study, interrupted_by_storage(study, owner()))
    except Exception:  # noqa: BLE001 - the storage is what failed; this is best effort
        pass
    return True
