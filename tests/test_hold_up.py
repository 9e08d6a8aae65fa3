"""Where real users and real faults push: processes started together on a new study, a creation
cut short, another program's database, resource limits, outputs that cannot be written, and
values out of range. Each is handled with one line and nothing lost or changed."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import optuna
import pytest

from cli_helpers import FINISHED, SMALL, load, run_cli, run_here, small_disk, start_code
from cli_helpers import run_main as run_captured
from study.run import main as run_main

pytestmark = pytest.mark.slow

# each process imports everything, says it is ready, and waits for the go: they then create the
# study at the same moment (imports take seconds, so without the barrier they would not race)
RACER = """
import sys, time
from pathlib import Path
from study.run import main
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.005)
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_processes_started_together_on_a_new_study_all_join_it(tmp_path: Path, backend: str, request) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path / 'new.db'}"
    go = tmp_path / "go"
    procs = []
    for i in range(4):
        args = ["--trials", "6", *SMALL, "--storage", url, "--threads", "1"]
        procs.append(start_code(RACER, str(tmp_path / f"ready{i}"), str(go), *args, cwd=tmp_path))
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(4)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a racer did not get ready"
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    study = load(url)
    assert "fingerprint" in study.user_attrs and study.metric_names == ["last_val_error"]
    finished = len(study.get_trials(states=FINISHED))
    assert 6 <= finished <= 6 + 3  # the budget holds across the four processes
    # they did start together: every one of them wrote its own start line
    assert sum("trials finished;" in out for out, _ in outputs) == 4


@pytest.mark.parametrize("left", ["nothing", "some settings", "the fingerprint only"])
def test_a_creation_cut_short_is_finished_by_the_rerun(tmp_path: Path, left: str, monkeypatch) -> None:
    # the states a kill between create_study and the last setting leaves behind (the fingerprint
    # is written last now; "the fingerprint only" is what the order before left)
    monkeypatch.setattr("study.experiment.CREATION_WAIT", 0.5)
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert run_main(["--trials", "1", *SMALL, "--storage", url, "--study-name", "whole"]) == 0
    whole = load(url, "whole").user_attrs
    study = optuna.create_study(storage=url, study_name="cut", direction="minimize")
    if left == "some settings":
        study.set_user_attr("epochs", whole["epochs"])
    elif left == "the fingerprint only":
        study.set_user_attr("fingerprint", whole["fingerprint"])
    assert run_main(["--trials", "2", *SMALL, "--storage", url, "--study-name", "cut"]) == 0
    cut = load(url, "cut")
    assert len(cut.get_trials(states=FINISHED)) == 2
    for key in ("fingerprint", "epochs", "batch_size", "precision", "metric", "data", "sampler", "seed", "command"):
        assert cut.user_attrs[key] == whole[key] or key == "command", key
    assert cut.metric_names == ["last_val_error"]


def test_a_study_of_another_program_is_still_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="theirs")
    study.set_user_attr("owner", "someone else")
    done = run_here("--trials", "1", *SMALL, "--storage", url, "--study-name", "theirs", cwd=tmp_path)
    assert done.returncode == 2 and "was not created by study.run" in done.stderr
    assert load(url, "theirs").user_attrs == {"owner": "someone else"} and not load(url, "theirs").trials


def test_a_storage_another_process_is_creating_is_joined_not_refused(tmp_path: Path) -> None:
    """Optuna creates its tables one statement at a time: of 3 processes started together on a new
    SQLite file, one read it when only ``studies`` was made and refused it (exit 2) as "a database
    of another program (tables: studies)". Empty tables of Optuna's names, without version_info
    yet, are such a storage: joined, and Optuna completes the schema."""
    import sqlite3

    from storage import open_storage

    path = tmp_path / "new.db"
    made = tmp_path / "made.db"  # the first of Optuna's statements, as it runs them
    open_storage(f"sqlite:///{made}").engine.dispose()
    with sqlite3.connect(made) as db:
        (studies,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'studies'").fetchone()
    db.close()
    with sqlite3.connect(path) as db:
        db.execute(studies)
    db.close()
    storage = open_storage(f"sqlite:///{path}")
    study = optuna.create_study(storage=storage, study_name="joined")
    study.enqueue_trial({"x": 1.0})
    assert [s.study_name for s in storage.get_all_studies()] == ["joined"]
    storage.engine.dispose()


def test_another_programs_sqlite_file_is_refused_and_left_byte_identical(tmp_path: Path) -> None:
    import sqlite3

    # the second has table names Optuna uses; the third a version_info of its own beside its notes,
    # and the fourth Optuna's names only, of other columns (both were taken for Optuna storages)
    for tables in (["notes"], ["trials", "studies"], ["notes2", "version_info"], ["version_info", "alembic_version"]):
        path = tmp_path / f"{tables[0]}.db"
        with sqlite3.connect(path) as db:
            for table in tables:
                db.execute(f"CREATE TABLE {table} (id INTEGER, text TEXT)")
                db.execute(f"INSERT INTO {table} VALUES (1, 'keep me')")
        db.close()
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        siblings = sorted(p.name for p in tmp_path.iterdir())
        done = run_here("--trials", "1", *SMALL, "--storage", f"sqlite:///{path}", cwd=tmp_path)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "database of another program" in done.stderr and sorted(tables)[0] in done.stderr
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == siblings  # no -wal, no -journal left


def test_a_report_never_creates_a_database(tmp_path: Path) -> None:
    done = run_here("--storage", f"sqlite:///{tmp_path / 'typo' / 'studdy.db'}", "--final-seeds", "0",
                   cwd=tmp_path, module="study.report")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "no database at" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--out", "--artifact-dir"])
def test_a_report_checks_where_it_writes_before_any_work(tmp_path: Path, flag: str) -> None:
    url = f"sqlite:///{tmp_path / 'studies' / 's.db'}"
    assert run_main(["--trials", "3", *SMALL, "--storage", url]) == 0
    before = load(url).user_attrs
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder should go\n")  # unwritable even for root
    args = ["--storage", url, "--final-seeds", "1", "--device", "cpu", flag, str(blocker / "sub")]
    if flag == "--artifact-dir":
        args += ["--out", str(tmp_path / "out")]
    started = time.monotonic()
    done = run_here(*args, cwd=tmp_path, module="study.report")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert flag in done.stderr and "cannot be written" in done.stderr
    assert "final word" not in done.stdout and time.monotonic() - started < 60  # nothing retrained
    assert load(url).user_attrs == before  # no final_test, no note: the study is as it was


def test_more_workers_than_the_machine_holds_are_capped_with_one_line(tmp_path: Path) -> None:
    import os

    url = f"sqlite:///{tmp_path / 's.db'}"
    # on one core (as taskset): the cap is then 2 processes, quicker to start than 4
    cap = 2
    done = run_cli("--trials", "3", *SMALL, "--storage", url, "--workers", "64", cwd=tmp_path,
                   cpus=sorted(os.sched_getaffinity(0))[:1])
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "--workers 64" in line]
    assert len(warning) == 1 and f"using {cap}" in warning[0] and "usable core" in warning[0]
    started = {line.split()[0] for line in done.stdout.splitlines() if " started: process " in line}
    assert 1 <= len(started) <= cap < 64  # never more processes than allowed
    assert len(load(url).get_trials(states=FINISHED)) >= 3


@pytest.mark.parametrize("args, named", [
    (["--heartbeat-interval", "10000000000"], "--heartbeat-interval"),
    (["--study-name", ""], "--study-name"),
    (["--study-name", "x" * 513], "--study-name"),
    (["--trials", "2000000"], "--trials"),
    (["--epochs", "100000"], "--epochs"),
    (["--timeout", "1e300"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--seed", str(2**32)], "--seed"),
    (["--batch-size", "60000"], "--batch-size"),
    (["--parallel-trials", "100000"], "--parallel-trials"),
    (["--threads", "100000"], "--threads"),
])
def test_every_numeric_flag_has_a_range(tmp_path: Path, args: list[str], named: str, capsys) -> None:
    code, _, err = run_captured(["--trials", "1", *SMALL, "--storage", f"sqlite:///{tmp_path / 's.db'}", *args], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "s.db").exists()  # refused before the storage is touched


CPU_ALLOC_FAILURE = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                     "you tried to allocate 8000000000 bytes. Error code 12 (Cannot allocate memory)")


def test_the_cpu_running_out_of_memory_halves_the_slots_as_a_gpu_does(tmp_path: Path, monkeypatch, capsys) -> None:
    # what torch's CPU allocator raises (a RuntimeError, not torch.OutOfMemoryError), seen with
    # --parallel-trials 300 under a memory limit: the trials in flight fail, the worker goes on
    # with half the slots instead of failing everything
    import objectives.stack as stack_module

    real_update, sizes = stack_module.Stack.update, []

    def update_without_memory(self, *args):
        sizes.append(len(self.trials))
        if len(self.trials) == 4:
            raise RuntimeError(CPU_ALLOC_FAILURE)
        return real_update(self, *args)

    monkeypatch.setattr(stack_module.Stack, "update", update_without_memory)
    url = f"sqlite:///{tmp_path / 'oom.db'}"
    assert run_main(["--trials", "4", "--parallel-trials", "4", "--storage", url, *SMALL]) == 0
    trials = load(url).trials
    assert [t.state.name for t in trials[:4]] == ["FAIL"] * 4
    assert all("out of memory on cpu with 4 trials in flight" in t.user_attrs["error"] for t in trials[:4])
    assert sum(t.state in FINISHED for t in trials) == 4 and max(sizes[sizes.index(2):]) == 2
    # one trial at a time: that trial fails as out of memory and the study goes on
    import objectives.objective as objective_module

    real_train, calls = objective_module.train, []

    def train_once_without_memory(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(CPU_ALLOC_FAILURE)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(objective_module, "train", train_once_without_memory)
    url = f"sqlite:///{tmp_path / 'oom1.db'}"
    assert run_main(["--trials", "2", "--storage", url, *SMALL]) == 0
    first, *rest = load(url).trials
    assert first.state.name == "FAIL" and first.user_attrs["error"] == "out of memory on cpu"
    assert sum(t.state in FINISHED for t in rest) == 2
    capsys.readouterr()


def test_a_bug_is_not_taken_for_a_full_memory(tmp_path: Path, monkeypatch) -> None:
    import objectives.stack as stack_module

    def broken(self, *args):
        raise RuntimeError("shape mismatch: a real bug")

    monkeypatch.setattr(stack_module.Stack, "update", broken)
    with pytest.raises(RuntimeError, match="a real bug"):
        run_main(["--trials", "2", "--parallel-trials", "2", "--storage", f"sqlite:///{tmp_path / 'b.db'}", *SMALL])
    assert [t.state.name for t in load(f"sqlite:///{tmp_path / 'b.db'}").trials] == ["FAIL", "FAIL"]


def test_a_full_disk_mid_run_ends_with_one_line_a_summary_and_a_database_that_resumes(tmp_path: Path) -> None:
    import shutil
    import sqlite3

    # 1000k: a new study queues its first 13 trials (the baseline, its neighbours, the covering start),
    # which with the WAL fill 700k before the first trial ends; the disk must fill mid-run
    with small_disk(tmp_path, "1000k") as disk:
        url = f"sqlite:///{disk / 's.db'}"
        args = ["--trials", "300", "--epochs", "1", "--train-samples", "512", "--device", "cpu", "--storage", url]
        done = run_cli(*args, cwd=tmp_path, timeout=300)
        assert done.returncode == 3, (done.stdout[-2000:], done.stderr)
        errors = done.stderr.strip().splitlines()
        assert len(errors) == 1 and "failed during the run: database or disk is full" in errors[0]
        assert str(disk / "s.db") in errors[0] and "Traceback" not in done.stderr
        assert re.search(r"study 'mnist-mlp-lr': \d+ finished of 300", done.stdout)  # the summary of what was done
        finished = int(re.search(r"study 'mnist-mlp-lr': (\d+) finished", done.stdout).group(1))
        assert finished > 0
        saved = tmp_path / "saved"
        saved.mkdir()
        for path in disk.iterdir():  # the database with its WAL, as the disk holds it
            shutil.copy(path, saved / path.name)
    with sqlite3.connect(saved / "s.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # nothing lost: the same command on a disk with room resumes it to the end
    url = f"sqlite:///{saved / 's.db'}"
    assert len(load(url).get_trials(states=FINISHED)) == finished
    again = run_here("--trials", str(finished + 2), *args[2:-2], "--storage", url, cwd=tmp_path)  # what it stores
    assert again.returncode == 0, again.stderr
    study = load(url)
    assert len(study.get_trials(states=FINISHED)) == finished + 2
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))  # the one cut off was settled


def test_postgres_stopped_mid_study_ends_with_one_line_per_worker_and_the_rerun_finishes(
        tmp_path: Path, postgres_server, postgres_url: str) -> None:
    from cli_helpers import start_cli

    args = ["--trials", "10", "--workers", "2", "--storage", postgres_url, *SMALL]
    proc = start_cli(*args, cwd=tmp_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if len(load(postgres_url).get_trials(states=FINISHED)) >= 4:
                break
        except KeyError:  # not created yet
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    postgres_server["stop"]()
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        postgres_server["start"]()
    assert proc.returncode == 3, (out[-1500:], err)
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert 1 <= len(lines) <= 2 and all("storage" in line and "failed" in line for line in lines), err
    assert re.search(r"summary: not available, the storage cannot be read \(.*(refused|connect).*\)", out) \
        or "finished of 10" in out, out[-500:]
    # nothing lost, nothing left RUNNING once the same command runs again
    before = len(load(postgres_url).get_trials(states=FINISHED))
    again = run_here("--trials", "10", "--storage", postgres_url, *SMALL, cwd=tmp_path)  # one worker finishes it
    assert again.returncode == 0, again.stderr
    study = load(postgres_url)
    assert before >= 4 and len(study.get_trials(states=FINISHED)) >= 10
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_a_postgres_server_that_never_answers_is_given_up_on(tmp_path: Path, monkeypatch) -> None:
    # README: a connection attempt gives up after CONNECT_TIMEOUT (10 s) instead of hanging. A
    # loopback socket that accepts connections and never speaks stands for a server that hangs;
    # the timeout is lowered to libpq's least, 2 s, for the test's sake.
    import socket

    import storage.storage as storage_module
    from storage import StorageError, open_storage

    assert storage_module.CONNECT_TIMEOUT == 10
    monkeypatch.setattr(storage_module, "CONNECT_TIMEOUT", 2)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(StorageError) as excinfo:
            open_storage(f"postgresql+psycopg://u:secret@127.0.0.1:{port}/db")
        took = time.monotonic() - started
    message = str(excinfo.value)
    assert 2 <= took < 10, took  # the lowered timeout ended it, not the default one or the OS's
    assert "\n" not in message and "secret" not in message and str(port) in message


def test_a_full_disk_is_not_called_a_damaged_database(tmp_path: Path) -> None:
    """Opened on a full disk, an intact study was "not a usable SQLite database (disk I/O error);
    restore it from a copy": a user who did lost every trial since the copy. SQLite's result code
    and the free space tell a full disk from a damaged file."""
    import hashlib

    with small_disk(tmp_path, "1000k") as disk:
        url = f"sqlite:///{disk / 's.db'}"
        assert run_here("--trials", "1", *SMALL, "--storage", url, cwd=tmp_path).returncode == 0
        with open(disk / "filler", "wb") as f:  # the rest of the disk, taken by something else
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in disk.iterdir() if p.name != "filler"}
        done = run_here("--trials", "3", *SMALL, "--storage", url, cwd=tmp_path)
        errors = done.stderr.strip().splitlines()
        assert done.returncode in (2, 3) and len(errors) == 1, done.stderr
        assert "full" in errors[0] and "restore it from a copy" not in errors[0] and str(disk) in errors[0], errors
        after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in disk.iterdir() if p.name != "filler"}
        assert after["s.db"] == before["s.db"]
