"""A pytest plugin: every test leaves the process-wide state as the session had it.

The commands' ``main(argv)`` run in this process in many tests (no interpreter start-up, no
seconds of importing torch per case). Each command takes the process over the way a command
should: Ctrl-C and SIGTERM raise ``KeyboardInterrupt`` (which the command turns into a clean
stop), torch gets the command's thread count, Optuna's logging is quietened. Left in place, the
suite would no longer end on SIGTERM (a CI runner's or a developer's ``timeout``): the next
in-process command swallows the interrupt as its own clean stop and the run goes on. So after
each test the signal handlers (and ``sys.unraisablehook``), torch threads and Optuna verbosity
are put back as the session had them (also what a module fixture's command changed), and the
storages its commands opened are closed (the warnings filters pytest puts back itself).
``tests/test_process_state.py`` runs pytest with this plugin on a probe and checks that SIGTERM
still ends it.
"""

from __future__ import annotations

import signal
import sys

import optuna
import pytest
import torch

from study.experiment import close_storages

SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


#: the session's own state, as this plugin found it before any test or fixture ran: put back
#: after every test, also what a module or session fixture's command changed before the test's
#: own setup (a snapshot taken per test kept it: a fixture's ``--threads 1`` or busy-machine
#: choice then held for every later test of the session)
HANDLERS = {sig: signal.getsignal(sig) for sig in SIGNALS}
THREADS, VERBOSITY = torch.get_num_threads(), optuna.logging.get_verbosity()
#: ``sys.unraisablehook`` (a command puts its own in front: study.interrupt.raise_on_interrupt), as
#: pytest's unraisable-exception plugin set it for the session (pytest_configure below)
UNRAISABLEHOOK = sys.unraisablehook


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    global UNRAISABLEHOOK
    UNRAISABLEHOOK = sys.unraisablehook


@pytest.fixture(autouse=True)
def _restore_process_state():
    try:
        yield  # the warnings filters: pytest puts them back after each phase of a test
    finally:
        for sig, handler in HANDLERS.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
        if torch.get_num_threads() != THREADS:
            torch.set_num_threads(THREADS)
        if optuna.logging.get_verbosity() != VERBOSITY:
            optuna.logging.set_verbosity(VERBOSITY)
        if sys.unraisablehook is not UNRAISABLEHOOK:
            sys.unraisablehook = UNRAISABLEHOOK
        close_storages()  # a command's storages, closed as its process's exit would
