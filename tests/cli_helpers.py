"""Helpers for tests that drive `python -m study.run` as a real process."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import urllib.request
import sys
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--epochs", "2", "--train-samples", "2000", "--device", "cpu"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_cli(*args: str, cwd: Path, timeout: float = 240, module: str = "study.run") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=timeout)


#: the warnings filters as the interpreter starts (pytest sets its own only around each test)
STARTUP_FILTERS = list(warnings.filters)


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str):
    """A tmpfs of ``size`` (``"1000k"``, ``"12m"``) mounted at ``tmp_path/small-disk`` for the
    block, unmounted after; the test is skipped where mounting needs a root this run lacks."""
    import pytest

    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def leave_free(disk: Path, free: int) -> None:
    """Fill ``disk`` (a :func:`small_disk`) with a file until about ``free`` bytes are left."""
    import shutil

    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, shutil.disk_usage(disk).free - free))


def run_here(*args: str, cwd: Path, module: str = "study.run", timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """As :func:`run_cli`, in this process: ``MODULE.main(args)`` from ``cwd`` with its output
    captured, for the tests that check what a command says, stores and writes, not what a process
    does (signals, its exit through the OS, threads, a second process). No interpreter start-up
    and no seconds of importing torch per command. Warnings print to its stderr as in a fresh
    process (pytest would record them instead); tests/process_state.py puts back the signal
    handlers, threads and verbosity it changes. ``timeout``: :func:`run_cli`'s, not used here."""
    import importlib

    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.filters[:] = STARTUP_FILTERS
            warnings._filters_mutated()  # type: ignore[attr-defined]  # and "once per place" starts afresh
            warnings.showwarning = warnings._showwarning_orig  # type: ignore[attr-defined]
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's refusals
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(here)
        from study.experiment import close_storages

        close_storages()  # as the process's exit would: the next command opens its own
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def start_cli(*args: str, cwd: Path, new_session: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "study.run", *args], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=new_session)


def load(url: str, name: str = "mnist-mlp-lr") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def snapshot(url: str, name: str = "mnist-mlp-lr") -> list[tuple]:
    study = load(url, name)
    return [(t.number, t.state, t.value, t.params, t.intermediate_values) for t in study.trials]


def running_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    """The trials RUNNING and training (their config sampled); none before the study exists."""
    try:
        return [t for t in load(url).get_trials(states=(TrialState.RUNNING,)) if "lr" in t.user_attrs]
    except KeyError:  # the study is not created yet
        return []


def wait_until(condition, proc: subprocess.Popen[str] | None = None, timeout: float = 120, what: str = "the condition"):
    """``condition()``'s first true value, polled; fails if ``proc`` ends first or ``timeout`` passes
    (a bound for a hung run, not a timing: the test waits on the condition)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.communicate()}")
        time.sleep(0.05)
    if proc is not None:
        proc.kill()
    raise AssertionError(f"no {what} within {timeout} s")


def wait_for_running(url: str, proc: subprocess.Popen[str], timeout: float = 120, count: int = 1) -> optuna.trial.FrozenTrial:
    """The first trial seen RUNNING and training, once ``count`` are; fails if the process ends first."""
    return wait_until(lambda: len(trials := running_trials(url)) >= count and trials[0], proc, timeout,
                      f"{count} trial(s) running")


def free_port() -> int:
    """A loopback port nothing listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_dashboard(url: str, port: int, timeout: float = 60) -> subprocess.Popen[bytes]:
    """A real optuna-dashboard process on 127.0.0.1:``port``, once it answers its API."""
    exe = Path(sys.executable).with_name("optuna-dashboard")
    proc = subprocess.Popen([str(exe), url, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"optuna-dashboard exited: {proc.stdout.read().decode()}")
            time.sleep(0.3)
    stop_dashboard(proc)
    raise AssertionError("optuna-dashboard did not answer in time")


def stop_dashboard(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def chromium(profile: Path) -> list[str]:
    """The command line of headless Chromium with its own profile folder, for pages that must be
    seen rendered (fails the test, saying how to get it, where Chromium is missing)."""
    import shutil

    import pytest

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is needed: apt-get install chromium (.ci/run installs it)", pytrace=False)
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=20000"]


def run_main(argv: list[str], capsys, module: str = "study.run") -> tuple[int, str, str]:
    """``python -m MODULE ARGV`` in this process (no interpreter start-up, for the many quick
    refusals): its exit code, stdout and stderr. argparse's refusals exit through SystemExit."""
    import importlib

    main = importlib.import_module(module).main
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
