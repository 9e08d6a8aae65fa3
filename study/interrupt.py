"""Ctrl-C and SIGTERM end every command with one line on stderr and exit code 130, never a
traceback, wherever they land: during the imports (seconds of torch), in the middle of a
command's work, or in its last lines.

``python -m study.<command>`` imports the ``study`` package first, which calls
:func:`exit_while_starting` (only then: ``sys.argv[0]`` is ``-m`` while the package is found),
so a signal during the imports ends the process at once: nothing has been read or written yet.
Each command's ``main`` then calls :func:`raise_on_interrupt`, so that the signal becomes a
``KeyboardInterrupt`` that its code turns into a clean stop (a trial marked FAIL, never left
RUNNING), and its ``__main__`` block runs it through :func:`run_main`, which turns one that
escapes into the same one line. Standard library only: it must be cheap to import.

Where a KeyboardInterrupt would cut something in two, the signal waits (:func:`interrupts_held`)
and raises as that ends. The commands' storages hold it around each call: raised inside
SQLAlchemy, it left SQLite's write lock held by a connection that the exception's traceback kept
alive, and the process's next write (the trial's "interrupted"), its heartbeat thread and the
other workers waited 60 s for it. The one-trial-at-a-time loop holds it everywhere but in a
trial's objective (:func:`interrupts_taken`): Optuna starts a trial's heartbeat thread (not a
daemon) before its ``with`` block holds it, and a KeyboardInterrupt in between left the thread
beating for ever, so the process never exited. Both hung a ``--workers`` run on SIGTERM until the
parent killed its workers, 30 s each (2026-12-07). One that lands in a finalizer, where Python
drops every exception, is sent again once the main thread is out of it (:func:`_rescue_lost_interrupt`).

A process that a command owns from its start to its exit (:func:`run_main`, a ``--workers``
child: :func:`own_the_process`) imports with the cyclic garbage collector paused
(:func:`pause_collection`: the ``study`` package for ``python -m study.<command>``, ``study.run``
in a worker, which ``spawn`` starts by importing its parent's main module), and takes its
imports out of the collector's reach once they are done (:func:`freeze_imports`), which resumes it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

__all__ = ["EXIT_INTERRUPTED", "exit_while_starting", "freeze_imports", "ignore_from_now", "own_the_process",
           "interrupts_held", "interrupts_taken", "pause_collection", "raise_interrupt",
           "raise_on_interrupt", "run_main"]

EXIT_INTERRUPTED = 130

_OWNED = False  # this process is a command's, from its start to its exit (not a library's or a test's)
_PAUSED = False  # pause_collection disabled the cyclic garbage collector; freeze_imports enables it
_REGIONS: list[bool] = []  # the main thread's open interrupts_held blocks, innermost last: True where held
_PENDING = False  # a signal came while held
#: the unraisable hook in place before raise_on_interrupt put _rescue_lost_interrupt in front
_UNRAISABLEHOOK: Callable[[sys.UnraisableHookArgs], object] = sys.__unraisablehook__


def own_the_process() -> None:
    """This process runs one command and ends with it (:func:`run_main`, a worker process)."""
    global _OWNED
    _OWNED = True


def pause_collection() -> None:
    """The cyclic garbage collector waits until :func:`freeze_imports`: importing torch,
    torchvision, Optuna and SQLAlchemy (hundreds of thousands of objects, few of them garbage) ran
    hundreds of collections, each going through all that was imported so far, a quarter of the
    imports' CPU (2026-12-07, 2-core Xeon: ``import torch, torchvision, optuna, sqlalchemy``, 3.0 to
    3.4 s of CPU, 2.1 to 2.7 s with the collector off). Only at the start of a process that a
    command owns, before its imports: nothing else runs in it until they are done."""
    global _PAUSED
    if gc.isenabled():
        gc.disable()
        _PAUSED = True


def freeze_imports() -> None:
    """Once the modules a command needs are imported (torch, torchvision, Optuna, SQLAlchemy: some
    hundreds of thousands of objects that live as long as the process), move them out of the
    cyclic garbage collector's reach (:func:`gc.freeze`): every full collection, the one at the exit
    included, went through all of them. A 2-worker run of 2 one-epoch trials spent 2.4 s less of
    CPU (13.4 to 11.0 s; 1.2 s per worker process; 2-core Xeon, 2026-12-07). Only in a process the
    command owns: in a library's or a test's, objects of the caller's would be frozen too, and
    their cycles never collected. The collector paused for the imports (:func:`pause_collection`)
    runs again from here."""
    global _PAUSED
    if _OWNED:
        gc.freeze()
    if _PAUSED:
        gc.enable()
        _PAUSED = False


def _exit_now(signum: int, frame: object) -> None:
    os.write(2, b"interrupted while starting: nothing was read or written\n")
    os._exit(EXIT_INTERRUPTED)


def exit_while_starting() -> None:
    """Until the command's own handlers are in place, Ctrl-C or SIGTERM ends the process at once."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_now)


def raise_interrupt(signum: int, frame: object) -> None:
    """The handler of Ctrl-C and SIGTERM: KeyboardInterrupt, at once or where held ones raise
    (:func:`interrupts_held`)."""
    global _PENDING
    if _REGIONS and _REGIONS[-1]:
        _PENDING = True
        return
    raise KeyboardInterrupt  # SIGTERM ends a trial like Ctrl-C: marked FAIL, never left RUNNING


def raise_on_interrupt() -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt (SIGINT too: a shell that starts a process in
    the background leaves SIGINT ignored, and Python keeps that); one that lands in a finalizer is
    raised again (:func:`_rescue_lost_interrupt`)."""
    global _PENDING, _UNRAISABLEHOOK
    _PENDING = False  # one held by an earlier command in this process (a test's) is not this one's
    signal.signal(signal.SIGINT, raise_interrupt)
    signal.signal(signal.SIGTERM, raise_interrupt)
    if sys.unraisablehook is not _rescue_lost_interrupt:
        _UNRAISABLEHOOK = sys.unraisablehook
        sys.unraisablehook = _rescue_lost_interrupt


def _rescue_lost_interrupt(unraisable: sys.UnraisableHookArgs) -> None:
    """``sys.unraisablehook`` from :func:`raise_on_interrupt` on. Python runs finalizers (``__del__``,
    weakref callbacks such as SQLAlchemy's, which the cyclic collector calls in the middle of any
    code) without letting their exceptions out: a KeyboardInterrupt that the handler raised in one
    was printed as "Exception ignored in" with its traceback, and lost; the command went on as if
    never interrupted and exited 0 (CI, 2026-12-07: Ctrl-C in a one-trial-at-a-time run). Here the
    signal comes again 50 ms later, from a timer thread, when the main thread is out of the
    finalizer (tripped at once, the handler ran in this hook, whose exceptions are lost too; one
    that lands in a finalizer again comes back the same way). Anything else goes to the hook
    that was in place."""
    if unraisable.exc_type is KeyboardInterrupt and signal.getsignal(signal.SIGINT) is raise_interrupt:
        # a signal, not _thread.interrupt_main: a main thread waiting in a system call (a sleep, a
        # lock) wakes up to it; SIGINT has SIGTERM's handler
        again = threading.Timer(0.05, signal.pthread_kill, args=(threading.main_thread().ident, signal.SIGINT))
        again.daemon = True
        again.start()
        return
    _UNRAISABLEHOOK(unraisable)


@contextlib.contextmanager
def interrupts_held(held: bool = True) -> Iterator[None]:
    """A Ctrl-C or SIGTERM (its handler :func:`raise_interrupt`) that comes in the block waits and
    raises KeyboardInterrupt as the block ends (or, nested, as the next block that takes them
    starts or the outermost held one ends): for code a KeyboardInterrupt must not cut in two (a
    storage call: the commands' storages enter this around each). ``held=False``: the opposite,
    within a held block; one that waited raises as the block starts. Off the main thread (which
    alone runs signal handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    depth = len(_REGIONS)
    try:
        _REGIONS.append(held)
        if not held:
            _raise_held()
        yield
    finally:
        del _REGIONS[depth:]  # wherever a signal landed, the blocks outside are as they were
    _raise_held()  # only when the block ended without an exception: one is on its way already


def interrupts_taken() -> contextlib.AbstractContextManager[None]:
    """Within :func:`interrupts_held`: a block where a signal raises at once (a trial's objective)."""
    return interrupts_held(False)


def _raise_held() -> None:
    global _PENDING
    if _PENDING and not (_REGIONS and _REGIONS[-1]):
        _PENDING = False
        raise KeyboardInterrupt


def ignore_from_now() -> None:
    """Ctrl-C and SIGTERM ignored from now on: for a command whose work is done and stored, that
    only says so and exits."""
    # Ignored, not handled: at its exit Python puts SIG_DFL back for every signal that has a Python
    # handler (never for an ignored one), so a signal in the exit's last moments killed the process
    # (-15) or raised inside an atexit callback, after the command had done all its work.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def run_main(main: Callable[[], int], what: str) -> int:
    """``main()``'s exit code; a KeyboardInterrupt it lets out is one line and 130. ``what``: the
    command, for the line. Once ``main`` returns, Ctrl-C and SIGTERM are ignored: the work is done
    (or stopped) and the exit code is said; a signal then changes nothing."""
    own_the_process()
    try:
        try:
            return main()
        finally:
            ignore_from_now()
    except KeyboardInterrupt:  # from main, or a signal in the instant before the line above
        print(f"interrupted: {what} stopped", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
