"""The tests' process server (tests/zygote.py): a command it forks is a process as ``python -m``
or ``python -c`` would start it, in what the tests rely on."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from cli_helpers import ENV, Forked, start_cli, start_code

pytestmark = pytest.mark.slow

PROBE = """
import json, os, random, sys
import numpy, torch
print(json.dumps({
    "argv": sys.argv, "orig_argv": sys.orig_argv, "path0": sys.path[0], "cwd": os.getcwd(), "pid": os.getpid(),
    "sid": os.getsid(0), "env": os.environ.get("LR_STUDY_PROBE"), "stdin": os.read(0, 10).decode(),
    "cpus": sorted(os.sched_getaffinity(0)), "main": sorted(k for k in globals() if not k.startswith("__")),
    "random": random.random(), "numpy": float(numpy.random.random()), "torch": torch.initial_seed(),
    "sigint": str(__import__("signal").getsignal(2)), "sigterm": str(__import__("signal").getsignal(15)),
}))
sys.stdout.flush()
"""


def _probe(tmp_path: Path, *args: str, **kwargs) -> dict:
    proc = Forked(None, list(args), cwd=tmp_path, env={**ENV, "LR_STUDY_PROBE": "seen"}, code=PROBE, **kwargs)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_a_forked_command_is_set_up_as_a_fresh_one(tmp_path: Path) -> None:
    cpu = sorted(os.sched_getaffinity(0))[:1]
    one, two = _probe(tmp_path, "a", "b c"), _probe(tmp_path, "x", new_session=True, cpus=cpu)
    assert one["argv"] == ["-c", "a", "b c"] and one["orig_argv"] == [sys.executable, "-c", PROBE, "a", "b c"]
    assert one["path0"] == "" and one["cwd"] == str(tmp_path.resolve()) and one["env"] == "seen"
    assert one["stdin"] == "" and one["main"] == ["json", "numpy", "os", "random", "sys", "torch"]  # nothing of the zygote's
    assert one["sigint"] == str(signal.default_int_handler) and one["sigterm"] == str(signal.SIG_DFL)
    assert one["sid"] != one["pid"] and two["sid"] == two["pid"] and two["cpus"] == cpu
    # each process draws its own random numbers, as fresh ones do
    assert one["random"] != two["random"] and one["numpy"] != two["numpy"] and one["torch"] != two["torch"]


@pytest.mark.parametrize("code, returncode, in_stderr", [
    ("import sys; print('out'); sys.exit(3)", 3, ""),
    ("raise ValueError('boom')", 1, "ValueError: boom"),
    ("raise KeyboardInterrupt", -signal.SIGINT, "KeyboardInterrupt"),  # Python's exit by SIGINT
    ("import atexit, sys; atexit.register(lambda: print('at exit', file=sys.stderr))", 0, "at exit"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL, ""),
])
def test_a_forked_command_ends_as_a_fresh_one(tmp_path: Path, code: str, returncode: int, in_stderr: str) -> None:
    proc = start_code(code, cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == returncode and in_stderr in err, (proc.returncode, err)
    assert out == ("out\n" if "out" in code else "")


def test_a_forked_study_command_runs_as_python_m(tmp_path: Path) -> None:
    proc = start_cli("--trials", "1", "--epochs", "0", cwd=tmp_path)  # refused: one line, exit 2
    out, err = proc.communicate(timeout=60)
    # one line (no runpy "found in sys.modules" warning: the module runs afresh as __main__)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("python -m study.run: error:") and "--epochs" in err, err
    proc = start_cli("--trials", "1", "--epochs", "1", "--train-samples", "200", "--device", "cpu", "--storage",
                     f"sqlite:///{tmp_path / 's.db'}", cwd=tmp_path, new_session=True)
    assert proc.stdout.readline().startswith("study 'mnist-mlp-lr'")
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130) and "Traceback" not in err, err


def test_an_environment_other_than_the_suites_starts_a_new_interpreter(tmp_path: Path) -> None:
    proc = start_cli("--help", cwd=tmp_path, env={**ENV, "LR_STUDY_PROBE": "x"})
    assert not isinstance(proc, Forked)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "usage: python -m study.run" in out


def test_a_zygote_started_while_a_command_ignored_signals_gives_its_children_the_usual_ones(tmp_path: Path) -> None:
    """Started (at its first use) by a test in the instant an in-process command had Ctrl-C and
    SIGTERM ignored, the zygote passed SIG_IGN on to every command it forked for the rest of the
    session. A zygote started as the session's is (with nothing to import first: what it imports
    has no say in its children's signals)."""
    from cli_helpers import _ZYGOTE_LOG, _end_zygote, launch_zygote

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as study.interrupt.ignore_from_now leaves them
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (tests/process_state.py puts them back)
    path = str(_ZYGOTE_LOG.with_name(f"{_ZYGOTE_LOG.stem}-bare.sock"))
    zygote = launch_zygote(path, preload=())
    try:
        assert zygote.stdout.readline().strip() == b"ready"
        code = "import signal; print(signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), sep='|')"
        proc = Forked(None, [], cwd=tmp_path, env=ENV, code=code, zygote=path)
        out, err = proc.communicate(timeout=60)
    finally:
        _end_zygote(zygote, path)
    assert proc.returncode == 0, err
    assert out.strip().split("|") == [str(signal.default_int_handler), str(signal.SIG_DFL)]


#: prints how many validation images a study of this process gets
SIZE = "import objectives.objective as o; print(o.load_mnist(device='cpu', train_samples=10).val_y.shape[0], flush=True)"
#: SIZE in a forked command, then in a new interpreter it starts with its environment (as a spawned worker starts)
SIZES = f"{SIZE}\nimport os, subprocess, sys\nsubprocess.run([sys.executable, '-c', {SIZE!r}], env=os.environ, check=True)\n"


@pytest.mark.full_validation
def test_validate_on_2k_reaches_a_forked_command_and_the_interpreters_it_starts(tmp_path: Path) -> None:
    """cli_helpers.VALIDATE_ON_2K: its sitecustomize in a forked command (run by the zygote, as
    site would) and in a new interpreter it starts (a spawned worker starts as one); the zygote
    itself is left as it was, and so is this process."""
    import objectives.objective as objective

    from cli_helpers import VALIDATE_ON_2K

    patched = Forked(None, [], cwd=tmp_path, env=VALIDATE_ON_2K, code=SIZES)
    out, err = patched.communicate(timeout=120)
    assert patched.returncode == 0 and out.split() == ["2000", "2000"], (out, err)
    plain = start_code(SIZE, cwd=tmp_path)
    out, err = plain.communicate(timeout=60)
    assert out.split() == ["10000"], (out, err)  # the next command of the zygote: all 10k again
    assert objective.load_mnist(device="cpu", train_samples=10).val_y.shape[0] == 10_000


def test_a_tests_studies_validate_on_2k_unless_it_is_marked(tmp_path: Path) -> None:
    """conftest._studies_validate_on_2k: a test's own studies and the commands it starts with no
    environment given validate on 2,000 images (a test marked ``full_validation``, as the one
    above, gets all 10k in both)."""
    import objectives.objective as objective

    proc = start_code(SIZE, cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert out.split() == ["2000"], (out, err)
    assert objective.load_mnist(device="cpu", train_samples=10).val_y.shape[0] == 2000
