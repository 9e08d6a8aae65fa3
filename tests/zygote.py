"""A process server for the tests: ``python -m MODULE ARGS`` (or ``-c CODE``) as a real process, without the
seconds of importing torch each time.

A real ``python -m study.run`` spends about 3.3 s of CPU importing torch, ``torch._dynamo``,
torchvision and Optuna before its first line, and the suite starts many of them (a signal, a
kill, a second process, a terminal need a real process). This server, started once per test
session, imports those modules and then forks one child per command. The child is a real
process: its own pid, session if asked, working folder, environment, stdin/stdout/stderr, signal
dispositions as Python starts with them, and it ends through the interpreter's own exit
(``atexit``, SQLite's connections closed, ``KeyboardInterrupt`` as SIGINT) and the OS. What it
does not go through is the interpreter's start: the imports ran before the fork, so what is read
at import time (``OMP_NUM_THREADS``, ``PYTHONPATH``) is the server's, and a signal cannot land
during the imports. Tests about those use :func:`subprocess.Popen`; the client
(``cli_helpers.start_cli``) falls back to it for any environment other than the suite's own.

Protocol, over one ``AF_UNIX`` ``SOCK_SEQPACKET`` connection per command: the client sends one
JSON message (``module`` or ``code``, ``args``, ``cwd``, ``env``, ``new_session``, ``cpus``) with three file
descriptors (the child's stdin, stdout, stderr); the server answers ``pid N`` at once and
``exit CODE CPU`` when the child has ended (``CODE`` as :attr:`subprocess.Popen.returncode`:
``-N`` for a signal; ``CPU``: the seconds of CPU it and the children it reaped used). The server ends when its stdin (the client's lifeline) closes.

Standard library only at the top: the modules to import first come on the command line.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import sys

__all__ = ["main", "serve"]

#: the zygote's own PYTHONPATH: folders a request's adds are set up in its child (see _become)
_OWN_PATH = os.environ.get("PYTHONPATH", "").split(os.pathsep)


def main() -> None:
    """``python -c "import sys; sys.path[0] = TESTS; import zygote; zygote.main()" SOCKET MODULE,...``:
    serve, and in each forked child run the requested module as ``python -m`` runs it."""
    import runpy

    # The dispositions a command started from a shell has. The zygote may have been started by a
    # test while an in-process command had SIGINT ignored (Python keeps an inherited SIG_IGN), and
    # every child would have inherited that for the rest of the session.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    request = serve(sys.argv[1], [name for name in sys.argv[2].split(",") if name])
    if request is None:
        return
    if request.get("code") is not None:  # `python -c CODE ARGS`
        main_globals = sys.modules["__main__"].__dict__
        exec(compile(request["code"], "<string>", "exec"), main_globals)
    else:
        runpy._run_module_as_main(request["module"])  # type: ignore[attr-defined]  # what `python -m` calls


def serve(path: str, preload: list[str]) -> dict | None:
    """Serve on the socket ``path``; returns ``None`` in the server when its lifeline closes, and
    the request in each forked child (which then becomes the command)."""
    for name in preload:
        importlib.import_module(name)
    # Every object so far into the permanent generation: a child's collections (and its exit's)
    # then never touch them, which would copy each page of the server's heap into the child.
    # Measured: a forked `pass` took 0.6 s of CPU to exit, 0.25 s after gc.freeze().
    gc.freeze()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(0, selectors.EVENT_READ, "lifeline")
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, the client's connection)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data == "lifeline":
                if os.read(0, 64):
                    continue
                for pidfd, (pid, conn) in children.items():
                    _quietly(os.kill, pid, signal.SIGKILL)  # a test that died left it; pytest is ending
                sel.close()
                listener.close()
                return None
            if key.data == "accept":
                conn, _ = listener.accept()
                try:
                    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                    request = json.loads(message)
                except (OSError, ValueError) as e:
                    print(f"zygote: a bad request: {e}", file=sys.stderr, flush=True)
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:  # the child: leave the server behind and become the command
                    sel.close()
                    listener.close()
                    for pidfd, (_, other) in children.items():
                        os.close(pidfd)
                        other.close()
                    conn.close()
                    _become(request, fds)
                    return request
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, conn)
                sel.register(pidfd, selectors.EVENT_READ, "child")
                _quietly(conn.send, f"pid {pid}".encode())
                continue
            pidfd = key.fd  # a child ended
            pid, conn = children.pop(pidfd)
            sel.unregister(pidfd)
            os.close(pidfd)
            _, status, usage = os.wait4(pid, 0)
            cpu = usage.ru_utime + usage.ru_stime  # the child's and its reaped children's (its workers)
            _quietly(conn.send, f"exit {os.waitstatus_to_exitcode(status)} {cpu:.3f}".encode())
            conn.close()


def _quietly(call, *args) -> None:
    try:
        call(*args)
    except OSError:  # the client went away (its test failed or ended): nothing to tell
        pass


def _become(request: dict, fds: list[int]) -> None:
    """In the forked child: the command's session, stdio, folder, environment and argv, as
    ``python -m`` would have set them up."""
    if request.get("new_session"):
        os.setsid()
    if request.get("cpus"):  # as `taskset`: a machine of that many cores
        os.sched_setaffinity(0, request["cpus"])
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # folders the request's PYTHONPATH adds to the zygote's: on sys.path after the first entry,
    # and the first sitecustomize among them run, as a fresh interpreter's site would
    added = [f for f in os.environ.get("PYTHONPATH", "").split(os.pathsep) if f and f not in _OWN_PATH]
    sys.path[1:1] = [f for f in added if f not in sys.path]
    for folder in added:
        if os.path.isfile(os.path.join(folder, "sitecustomize.py")):
            runpy.run_path(os.path.join(folder, "sitecustomize.py"), run_name="sitecustomize")
            break
    # Python's start: stdout line-buffered on a terminal only; stderr line-buffered
    sys.stdout.reconfigure(line_buffering=os.isatty(1))
    sys.stderr.reconfigure(line_buffering=True)
    module, code, args = request.get("module"), request.get("code"), request["args"]
    if code is not None:
        sys.path[0] = ""  # `python -c`: the working folder first, as ''
        sys.argv = ["-c", *args]
        sys.orig_argv = [sys.executable, "-c", code, *args]
        module = ""
    else:
        sys.path[0] = os.getcwd()  # `python -m`: the working folder first
        sys.argv = ["-m", *args]
        sys.orig_argv = [sys.executable, "-m", module, *args]
        # the zygote imported it; a fresh `python -m` has it only as __main__ (runpy would warn)
        sys.modules.pop(module, None)
    # a fresh process's generators: `random` reseeds itself at a fork; NumPy's and torch's do not
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()
    if module.startswith("study."):  # what importing the package does under `python -m study.X`
        from study.interrupt import exit_while_starting

        exit_while_starting()
    main = sys.modules["__main__"].__dict__  # the server's `-c` globals: a fresh __main__ has none
    for name in [name for name in main if not name.startswith("__")]:
        del main[name]
