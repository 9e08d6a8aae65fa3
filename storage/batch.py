"""Many small trial writes in one storage transaction.

Optuna writes each intermediate value and each attr in a transaction of its own. With K trials
in flight, an epoch boundary of the fused engine then costs K transactions (plus K more for the
attrs of trials that start or end), each taking SQLite's write lock. Optuna has no public call
that writes several of them at once, so :func:`write_trials` opens one transaction on the
``RDBStorage`` and fills it as Optuna's own setters do (``_set_trial_attr_without_commit``): the rows,
the checks (a finished trial cannot be updated) and the value encoding are Optuna's; the
intermediate values are read and written with two queries for all trials (as that routine does
per value, on Optuna's models). This module is the one place that reaches into Optuna's
private storage internals.

Any other storage (in-memory, journal), a batch in which some trial has meanwhile been finished
by another process (a stale heartbeat), and a batch that meets a unique-key error (another
process wrote one of its rows first), fall back to Optuna's one-at-a-time setters, which skip
nothing that can still be written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage

__all__ = ["TrialWrites", "rdb_backend", "storage_of", "trial_id", "write_trials", "write_user_attrs"]


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of ``trial``. Optuna's storage API (``set_trial_state_values``,
    ``record_heartbeat``, …) takes this id, but its public Trial and FrozenTrial name a trial by
    its number in the study only; the id is kept in the private ``_trial_id``."""
    return trial._trial_id


def storage_of(study: optuna.Study) -> BaseStorage:
    """``study``'s storage. Optuna keeps it private (``_storage``) and has no getter; heartbeats
    and writes of many trials at once need it."""
    return study._storage


@dataclass
class TrialWrites:
    """What to write, by trial id: ``(trial_id, step, value)`` and ``(trial_id, key, value)``."""

    intermediate_values: list[tuple[int, int, float]] = field(default_factory=list)
    user_attrs: list[tuple[int, str, Any]] = field(default_factory=list)
    system_attrs: list[tuple[int, str, Any]] = field(default_factory=list)
    #: filled by :func:`write_trials`: the trial ids whose writes were dropped, as already finished
    finished_elsewhere: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.intermediate_values or self.user_attrs or self.system_attrs)

    def add_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        self.user_attrs.extend((trial_id, key, value) for key, value in attrs.items())


def rdb_backend(storage: BaseStorage) -> RDBStorage | None:
    """The ``RDBStorage`` behind ``storage`` (a study's storage is Optuna's cache around it)."""
    backend = getattr(storage, "_backend", storage)  # optuna.storages._CachedStorage keeps it there
    return backend if isinstance(backend, RDBStorage) else None


def write_trials(storage: BaseStorage, writes: TrialWrites) -> int:
    """Write ``writes`` in one transaction where the storage allows; returns the transactions used.

    A write to a trial that is already finished is dropped (as a ``UpdateFinishedTrialError``
    from Optuna's setter would drop it): it can only be a trial that another process failed.
    Its id goes into ``writes.finished_elsewhere``.
    """
    if not writes:
        return 0
    backend = rdb_backend(storage)
    if backend is not None:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        try:
            # not Optuna's ignore_integrity_error=True: with it, a unique-key error (another process
            # writing the same row) rolled the whole batch back and reported success: the K values
            # and the rung records vanished. The storage's call_guard as around its own calls
            # (storage.open_storage).
            with (getattr(backend, "call_guard", contextlib.nullcontext)(),
                  _create_scoped_session(backend.scoped_session, False) as session):
                _intermediate_values(backend, session, models, writes.intermediate_values)
                for model, items in ((models.TrialUserAttributeModel, writes.user_attrs),
                                     (models.TrialSystemAttributeModel, writes.system_attrs)):
                    for trial_id, key, value in items:
                        backend._set_trial_attr_without_commit(session, model, trial_id, key, value)
            return 1
        except (optuna.exceptions.UpdateFinishedTrialError, sqlalchemy.exc.IntegrityError):
            pass  # rolled back whole: write what can still be written, one at a time
    return _one_at_a_time(storage, writes)


def write_user_attrs(storage: BaseStorage, trial_id: int, attrs: dict[str, Any]) -> int:
    """One trial's user attrs in one transaction (see :func:`write_trials`)."""
    writes = TrialWrites()
    writes.add_user_attrs(trial_id, attrs)
    return write_trials(storage, writes)


def _intermediate_values(backend: RDBStorage, session: Any, models: Any, items: list[tuple[int, int, float]]) -> None:
    """What ``_set_trial_intermediate_value_without_commit`` does per value (the trial must be
    updatable; a value already stored for the step is replaced; Optuna's encoding of inf and
    nan), with two queries for all of them instead of two per value: at K = 64 trials the
    per-value routine made a boundary's write cost more per trial than at K = 32."""
    if not items:
        return
    ids = sorted({trial_id for trial_id, _, _ in items})
    states = dict(session.query(models.TrialModel.trial_id, models.TrialModel.state)
                  .filter(models.TrialModel.trial_id.in_(ids)))
    for trial_id in ids:
        if trial_id not in states:
            raise KeyError(f"no trial with id {trial_id}")
        backend.check_trial_is_updatable(trial_id, states[trial_id])
    value_model = models.TrialIntermediateValueModel
    existing = {(row.trial_id, row.step): row for row in session.query(value_model).filter(
        value_model.trial_id.in_(ids), value_model.step.in_({step for _, step, _ in items}))}
    for trial_id, step, value in items:
        stored, kind = value_model.intermediate_value_to_stored_repr(value)
        row = existing.get((trial_id, step))
        if row is None:
            row = existing[(trial_id, step)] = value_model(trial_id=trial_id, step=step, intermediate_value=stored,
                                                           intermediate_value_type=kind)
            session.add(row)
        else:
            row.intermediate_value, row.intermediate_value_type = stored, kind


def _one_at_a_time(storage: BaseStorage, writes: TrialWrites) -> int:
    calls: Iterable[tuple[Any, Sequence[Any]]] = [
        *((storage.set_trial_intermediate_value, item) for item in writes.intermediate_values),
        *((storage.set_trial_user_attr, item) for item in writes.user_attrs),
        *((storage.set_trial_system_attr, item) for item in writes.system_attrs),
    ]
    n = 0
    for setter, args in calls:
        try:
            setter(*args)
        except optuna.exceptions.UpdateFinishedTrialError:
            writes.finished_elsewhere.add(args[0])
        n += 1
    return n
