"""The suite still ends on SIGTERM after commands ran in its process (tests/process_state.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cli_helpers import ROOT

PROBE = textwrap.dedent('''
    import signal, sys, time

    import pytest
    import torch

    from study.report import main

    # the session's own: SIGINT is SIG_IGN in a job a shell started in the background
    THREADS, SIGINT = torch.get_num_threads(), signal.getsignal(signal.SIGINT)


    @pytest.fixture(scope="module")
    def a_command_in_a_fixture():
        """What a command's main does to the process, in a module fixture (set up before the
        test's own fixtures)."""
        from study.cli import set_threads
        from study.interrupt import raise_interrupt

        set_threads(1, THREADS + 1)
        signal.signal(signal.SIGINT, raise_interrupt)


    def test_a_command_in_process(tmp_path, a_command_in_a_fixture):
        try:
            main(["--storage", f"sqlite:///{tmp_path / 'none.db'}", "--final-seeds", "0"])
        except SystemExit:
            pass
        from study.interrupt import raise_interrupt
        assert signal.getsignal(signal.SIGTERM) is raise_interrupt  # the command took SIGTERM over


    def test_then_a_long_one():
        # the session's threads and Ctrl-C are back, also what the module fixture changed
        assert torch.get_num_threads() == THREADS, torch.get_num_threads()
        assert signal.getsignal(signal.SIGINT) is SIGINT
        print("ready", file=sys.__stdout__, flush=True)
        time.sleep(60)
''')


def test_sigterm_ends_the_suite_after_an_in_process_command(tmp_path: Path) -> None:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "process_state", "-q", "-s", "-p", "no:cacheprovider",
                             "test_probe.py"], cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # the first test passed and the second one sleeps
            seen.append(line)
            if line.strip().endswith("ready"):
                break
        else:
            raise AssertionError(f"the probe never got to its second test: {''.join(seen)}")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGTERM, (proc.returncode, "".join(seen) + rest)  # SIGTERM's default: ended
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_only_a_process_the_command_owns_freezes_its_imports() -> None:
    """study.interrupt.freeze_imports: a command's own process (run_main, a worker) takes its
    imports out of the garbage collector's reach; a study run by main() in a caller's process (a
    test's, a library's) leaves the caller's objects to it."""
    import gc

    from study.interrupt import freeze_imports

    frozen = gc.get_freeze_count()
    freeze_imports()  # this process is pytest's
    assert gc.get_freeze_count() == frozen
    code = ("import gc; from study.interrupt import freeze_imports, run_main; "
            "run_main(lambda: freeze_imports() or 0, 'probe'); print(gc.get_freeze_count())")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and int(done.stdout) > 1000, (done.stdout, done.stderr)
