"""Ctrl-C and SIGTERM in a command's process: a signal waits where a KeyboardInterrupt would cut
something in two (a storage call), and lands where it may (a trial's objective). The processes
themselves: tests/test_reliability.py."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from study.experiment import close_storages, storage_at
from study.interrupt import interrupts_held, interrupts_taken, raise_interrupt, raise_on_interrupt


@pytest.fixture
def sigterm_raises():
    """SIGTERM handled as a command handles it (study.interrupt.raise_on_interrupt), for one test."""
    before = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_signal_inside_a_storage_call_lands_once_the_call_is_done(tmp_path: Path, sigterm_raises) -> None:
    # Raised inside SQLAlchemy (here: as a query has run; one of the two windows behind a
    # SIGTERM'd `--workers` run that hung in CI on 2026-12-07), the KeyboardInterrupt left
    # SQLite's write lock held by a connection that its traceback kept alive: the process's next
    # write, its heartbeat thread and every other worker waited up to 60 s.
    path = tmp_path / "s.db"
    storage = storage_at(f"sqlite:///{path}", 60)  # what the commands open
    try:
        study = optuna.create_study(storage=storage, study_name="s")
        trial_id = study.ask()._trial_id
        fired = []

        def signal_mid_call(connection, cursor, statement: str, *args: object) -> None:
            if not fired and statement.lstrip().startswith("SELECT"):  # a row read, its statement open
                fired.append(True)
                signal.raise_signal(signal.SIGTERM)

        sqlalchemy.event.listen(storage.engine, "after_cursor_execute", signal_mid_call)
        try:
            with pytest.raises(KeyboardInterrupt):
                storage.set_trial_user_attr(trial_id, "error", "interrupted")
        finally:
            sqlalchemy.event.remove(storage.engine, "after_cursor_execute", signal_mid_call)
        assert fired
        # the call was done whole, and nothing holds the database
        other = sqlite3.connect(path, timeout=0.5, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert storage.get_trial(trial_id).user_attrs == {"error": "interrupted"}
    finally:
        close_storages()


def test_a_held_signal_lands_where_signals_are_taken_or_as_the_outermost_hold_ends(sigterm_raises) -> None:
    landed = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            signal.raise_signal(signal.SIGTERM)
            with interrupts_held():  # nested: it ends, the outer hold still holds
                pass
            landed.append("held")
            with interrupts_taken():
                landed.append("not reached")  # it raised as the block began
    assert landed == ["held"]
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            signal.raise_signal(signal.SIGTERM)
            landed.append("end of the hold")
    assert landed == ["held", "end of the hold"]
    # nothing left pending: the next block runs to its end
    with interrupts_held():
        landed.append("quiet")
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held(), interrupts_taken():
            signal.raise_signal(signal.SIGTERM)
            landed.append("not reached")  # taken: it raised at once
    assert landed[-1] == "quiet"


def test_a_signal_that_lands_in_a_finalizer_is_raised_again_outside_it() -> None:
    # Python runs a finalizer (``__del__``, a weakref callback such as SQLAlchemy's, called by the
    # cyclic collector in the middle of any code) without letting its exceptions out: the
    # KeyboardInterrupt raised in one was printed ("Exception ignored in") and lost, and a
    # Ctrl-C'd run went on and exited 0 (CI, 2026-12-07)
    raise_on_interrupt()  # as a command takes the signals (tests/process_state puts them back)
    landed = []

    class Finalized:
        def __del__(self) -> None:
            landed.append("in the finalizer")
            signal.raise_signal(signal.SIGTERM)  # its handler raises here, inside __del__
            landed.append("after the signal")

    with pytest.raises(KeyboardInterrupt):
        Finalized()  # no reference left: finalized at once
        time.sleep(10)  # the main thread's next lines, outside the finalizer: the signal ends the sleep
    assert landed == ["in the finalizer"]
