"""Helpers for tests that drive `python -m study.run` as a real process."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
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
#: ENV, and the study's trials validate on 2,000 images in the command and every worker it
#: spawns (tests/validate_on_2k/sitecustomize.py): for tests of processes, not of values
VALIDATE_ON_2K = {**ENV, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "validate_on_2k"), str(ROOT)])}
#: the environment of a command started with none given: VALIDATE_ON_2K, or ENV in a test marked
#: ``full_validation`` (set for each test by conftest.py)
DEFAULT_ENV = VALIDATE_ON_2K


def with_sitecustomize(folder: Path, code: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default :data:`DEFAULT_ENV`) with ``code`` as a ``sitecustomize`` that the
    commands started with it run first (a fault or a probe injected into a command and its
    workers), written into ``folder``, which is put first on ``PYTHONPATH``."""
    env = DEFAULT_ENV if env is None else env
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(code)
    return {**env, "PYTHONPATH": os.pathsep.join([str(folder), env["PYTHONPATH"]])}


def run_cli(*args: str, cwd: Path, timeout: float = 240, module: str = "study.run", fresh: bool = False,
            cpus: list[int] | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` as a real process, forked by the zygote (``fresh``: a new
    interpreter, for what happens while it starts), on the cores ``cpus`` if given (as ``taskset``);
    what :func:`subprocess.run` gives."""
    proc = start_cli(*args, cwd=cwd, module=module, fresh=fresh, cpus=cpus, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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


def start_cli(*args: str, cwd: Path, new_session: bool = False, module: str = "study.run", fresh: bool = False,
              env: dict[str, str] | None = None, stdin: int | None = None, stdout: int | None = None,
              stderr: int | None = None, cpus: list[int] | None = None) -> subprocess.Popen[str] | Forked:
    """``python -m MODULE ARGS`` started as a real process, its stdout and stderr piped (or the
    descriptors given), what :class:`subprocess.Popen` gives. Forked by the zygote
    (tests/zygote.py: no seconds of importing torch) unless ``fresh`` or ``env`` is not the
    suite's own but for folders put before it on ``PYTHONPATH`` (:data:`VALIDATE_ON_2K`, a test's
    sitecustomize: the zygote sets them up in its child): a new interpreter then, for what is read
    or can happen while one starts."""
    env = DEFAULT_ENV if env is None else env
    if fresh or not _forkable(env):
        return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, text=True,
                                stdin=subprocess.DEVNULL if stdin is None else stdin,
                                stdout=subprocess.PIPE if stdout is None else stdout,
                                stderr=subprocess.PIPE if stderr is None else stderr, start_new_session=new_session,
                                preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus))
    return Forked(module, list(args), cwd=cwd, env=env, new_session=new_session, stdin=stdin, stdout=stdout,
                  stderr=stderr, cpus=cpus)


def _forkable(env: dict[str, str]) -> bool:
    """``env`` is the suite's own, but for folders before the suite's on ``PYTHONPATH``."""
    rest = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    return rest == {k: v for k, v in ENV.items() if k != "PYTHONPATH"} and \
        env.get("PYTHONPATH", "").split(os.pathsep)[-1:] == [ENV["PYTHONPATH"]]


def start_code(code: str, *args: str, cwd: Path) -> Forked:
    """``python -c CODE ARGS`` forked by the zygote (the suite's environment), stdout and stderr
    piped: for a test's own small script that imports the project."""
    return Forked(None, list(args), cwd=cwd, env=DEFAULT_ENV, code=code)


class Forked:
    """A command the zygote forked, with what the tests use of :class:`subprocess.Popen`: ``pid``,
    ``args``, ``stdout``/``stderr`` (text, when piped), ``returncode``, ``poll``, ``wait``,
    ``communicate``, ``send_signal``, ``terminate``, ``kill``. The exit code comes from the zygote,
    the child's parent, which reaps it. ``zygote``: another zygote's socket (:func:`launch_zygote`)
    than the session's."""

    def __init__(self, module: str | None, args: list[str], *, cwd: Path, env: dict[str, str], code: str | None = None,
                 new_session: bool = False, stdin: int | None = None, stdout: int | None = None,
                 stderr: int | None = None, cpus: list[int] | None = None, zygote: str | None = None) -> None:
        self.args = [sys.executable, *(["-c", code] if code is not None else ["-m", module]), *args]
        self.returncode: int | None = None
        mine: list[int] = []  # the descriptors opened here for the child, closed once sent
        theirs: list[int] = []
        pipes: list[int | None] = []
        for given, reading in ((stdin, True), (stdout, False), (stderr, False)):
            if given == subprocess.STDOUT:  # stderr into stdout's pipe
                theirs.append(theirs[1])
                pipes.append(None)
            elif given is not None and given >= 0:
                theirs.append(given)
                pipes.append(None)
            elif reading or given == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_RDONLY if reading else os.O_WRONLY)
                mine.append(fd)
                theirs.append(fd)
                pipes.append(None)
            else:
                r, w = os.pipe()
                mine.append(w)
                theirs.append(w)
                pipes.append(r)
        self.stdin = None
        self.stdout = open(pipes[1], encoding="utf-8", errors="replace") if pipes[1] is not None else None
        self.stderr = open(pipes[2], encoding="utf-8", errors="replace") if pipes[2] is not None else None
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._conn.connect(zygote or _zygote())  # the session's, unless another one's socket
            request = {"module": module, "code": code, "args": args, "cwd": str(Path(cwd).resolve()), "env": env,
                       "new_session": new_session, "cpus": None if cpus is None else sorted(cpus)}
            socket.send_fds(self._conn, [json.dumps(request).encode()], theirs)
        finally:
            for fd in mine:
                os.close(fd)
        reply = self._conn.recv(64).decode()
        if not reply.startswith("pid "):
            raise RuntimeError(f"the zygote did not start {self.args}: {reply!r} (see its log, {_ZYGOTE_LOG})")
        self.pid = int(reply.split()[1])
        self._readers: dict[str, object] = {}

    def _take_exit(self, timeout: float | None) -> bool:
        if self.returncode is not None:
            return True
        self._conn.settimeout(timeout)
        try:
            reply = self._conn.recv(64).decode()
        except (TimeoutError, BlockingIOError):
            return False
        if not reply.startswith("exit "):
            raise RuntimeError(f"the zygote lost {self.args} (pid {self.pid}): {reply!r}, see {_ZYGOTE_LOG}")
        _, code, cpu = reply.split()
        self.returncode = int(code)
        global FORKED_CPU
        FORKED_CPU += float(cpu)
        self._conn.close()
        return True

    def poll(self) -> int | None:
        self._take_exit(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._take_exit(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode  # type: ignore[return-value]

    def communicate(self, input: None = None, timeout: float | None = None) -> tuple[str | None, str | None]:
        """Both streams to their end, then the exit code, as :meth:`subprocess.Popen.communicate`
        (a timeout raises :class:`subprocess.TimeoutExpired` and a later call goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None and name not in self._readers:
                chunks: list[str] = []
                thread = threading.Thread(target=lambda s=stream, c=chunks: c.append(s.read()), daemon=True)
                thread.start()
                self._readers[name] = (thread, chunks)
        for thread, _ in self._readers.values():  # type: ignore[misc]
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        results = []
        for name in ("stdout", "stderr"):
            if name in self._readers:
                results.append("".join(self._readers[name][1]))  # type: ignore[index]
                getattr(self, name).close()
            else:
                results.append(None)
        return results[0], results[1]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # as Popen: never a signal to a pid that may have been reused
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self.wait()


#: what the zygote imports before it forks: every command the tests start and what they import at
#: their first use (torch._dynamo with torch.optim's first call, torchvision with MNIST, the
#: report's figures and page, Optuna's RDB migration), so that a command imports next to nothing
ZYGOTE_PRELOAD = ("study.run", "study.report", "study.lr_range", "study.workers", "study.runner", "study.reporter",
                  "study.final_word", "study.figures", "study.page", "study.export", "benchmarks._common",
                  "torch._dynamo", "torchvision.datasets.mnist", "optuna.visualization", "optuna.artifacts",
                  "optuna_dashboard", "plotly.graph_objects", "plotly.io", "plotly.offline", "sqlalchemy.dialects.sqlite",
                  "alembic.command", "alembic.migration")
_ZYGOTE: subprocess.Popen[bytes] | None = None
_ZYGOTE_READY = False  # it said "ready" (its imports done)
#: the CPU seconds of the commands the zygote forked, theirs and their workers', so far (the
#: zygote reaps them, so they are not in this process's RUSAGE_CHILDREN)
FORKED_CPU = 0.0
_ZYGOTE_LOG = Path(tempfile.gettempdir()) / f"lr-study-zygote-{os.getpid()}.log"


def start_zygote() -> None:
    """Start this session's zygote without waiting for it (its seconds of importing then overlap
    the collection of the tests; ``conftest.pytest_configure`` calls this); :func:`_zygote` waits."""
    global _ZYGOTE, _ZYGOTE_READY
    import atexit

    path = str(_ZYGOTE_LOG.with_suffix(".sock"))
    _ZYGOTE = launch_zygote(path)
    _ZYGOTE_READY = False
    atexit.register(_end_zygote, _ZYGOTE, path)


def launch_zygote(path: str, preload: tuple[str, ...] = ZYGOTE_PRELOAD) -> subprocess.Popen[bytes]:
    """A zygote serving on the socket ``path`` once it has imported ``preload``; it says "ready"
    on its stdout then, and ends when its stdin closes (:func:`_end_zygote`)."""
    if os.path.exists(path):
        os.unlink(path)
    tests = str(Path(__file__).resolve().parent)
    code = f"import sys; sys.path[0] = {tests!r}; import zygote; zygote.main()"
    with open(_ZYGOTE_LOG, "ab") as log:
        return subprocess.Popen([sys.executable, "-c", code, path, ",".join(preload)], cwd=ROOT, env=ENV,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)


def _zygote() -> str:
    """The socket of this test session's zygote, started at the first use if it was not before
    (one interpreter start and one import of torch for the whole session) and ended with the
    session."""
    global _ZYGOTE_READY
    if _ZYGOTE is None or (_ZYGOTE_READY and _ZYGOTE.poll() is not None):
        start_zygote()
    if not _ZYGOTE_READY:
        ready = _ZYGOTE.stdout.readline()  # type: ignore[union-attr]
        if ready.strip() != b"ready":
            raise RuntimeError(f"the tests' zygote did not start: see {_ZYGOTE_LOG}")
        _ZYGOTE_READY = True
    return str(_ZYGOTE_LOG.with_suffix(".sock"))


def _end_zygote(proc: subprocess.Popen[bytes], path: str) -> None:
    proc.stdin.close()  # type: ignore[union-attr]  # its lifeline
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    if os.path.exists(path):
        os.unlink(path)
    if _ZYGOTE_LOG.exists() and _ZYGOTE_LOG.stat().st_size == 0:  # kept only when it has something to say
        _ZYGOTE_LOG.unlink()


@functools.cache
def _storage(url: str) -> optuna.storages.RDBStorage:
    """One storage per URL for the session, connecting anew for each query (``NullPool``: this
    process holds no connection between them, as when each load built its own). Built from the URL
    at every poll, a load cost 30 to 80 ms of CPU (an engine, the tables' check, Alembic's version
    check), about half a core at 50 ms polls, taken from the processes the test waits on; now 5 to 10 ms."""
    from sqlalchemy.pool import NullPool

    return optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})


def load(url: str, name: str = "mnist-mlp-lr") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=_storage(url))


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


def chromium(folder: Path, *runs: list[str], timeout: float = 180) -> list[str]:
    """What headless Chromium prints for each of ``runs`` (its arguments: ``--dump-dom URL``,
    ``--screenshot=PNG URL``, both in one run), for pages that must be seen rendered; fails the
    test, saying how to get it, where Chromium is missing. The runs go at once, each with its own
    profile under ``folder`` (two dashboard pages: 2.6 s, against 3.4 s one after the other;
    three at once were slower than one by one on 2 cores)."""
    import shutil

    import pytest

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is needed: apt-get install chromium (.ci/run installs it)", pytrace=False)
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=20000"]
    procs = [subprocess.Popen([*flags, f"--user-data-dir={folder / f'profile-{i}'}", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for i, args in enumerate(runs)]
    try:
        return [proc.communicate(timeout=timeout)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


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
