"""Where real users and real faults push: processes started together on a new study, a creation
cut short, another program's database, resource limits, outputs that cannot be written, and
values out of range. Each is handled with one line and nothing lost or changed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from cli_helpers import ENV, FINISHED, SMALL, load, run_cli
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
        procs.append(subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / f"ready{i}"), str(go), *args],
                                      cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
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
    assert "fingerprint" in study.user_attrs and study.metric_names == ["val_loss"]
    finished = len(study.get_trials(states=FINISHED))
    assert 6 <= finished <= 6 + 3  # the budget holds across the four processes
    # they did start together: every one of them wrote its own start line
    assert sum("trials finished;" in out for out, _ in outputs) == 4


@pytest.mark.parametrize("left", ["nothing", "some settings", "the fingerprint only"])
def test_a_creation_cut_short_is_finished_by_the_rerun(tmp_path: Path, left: str, monkeypatch) -> None:
    # the states a kill between create_study and the last setting leaves behind (the fingerprint
    # is written last now; "the fingerprint only" is what the order before left)
    monkeypatch.setattr("study.run.CREATION_WAIT", 0.5)
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
    for key in ("fingerprint", "epochs", "batch_size", "precision", "data", "sampler", "seed", "command"):
        assert cut.user_attrs[key] == whole[key] or key == "command", key
    assert cut.metric_names == ["val_loss"]


def test_a_study_of_another_program_is_still_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=url, study_name="theirs")
    study.set_user_attr("owner", "someone else")
    done = run_cli("--trials", "1", *SMALL, "--storage", url, "--study-name", "theirs", cwd=tmp_path)
    assert done.returncode == 2 and "was not created by study.run" in done.stderr
    assert load(url, "theirs").user_attrs == {"owner": "someone else"} and not load(url, "theirs").trials


def test_another_programs_sqlite_file_is_refused_and_left_byte_identical(tmp_path: Path) -> None:
    import sqlite3

    for tables in (["notes"], ["trials", "studies"]):  # the second has table names Optuna uses
        path = tmp_path / f"{tables[0]}.db"
        with sqlite3.connect(path) as db:
            for table in tables:
                db.execute(f"CREATE TABLE {table} (id INTEGER, text TEXT)")
                db.execute(f"INSERT INTO {table} VALUES (1, 'keep me')")
        db.close()
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        siblings = sorted(p.name for p in tmp_path.iterdir())
        done = run_cli("--trials", "1", *SMALL, "--storage", f"sqlite:///{path}", cwd=tmp_path)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "database of another program" in done.stderr and tables[0] in done.stderr
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == siblings  # no -wal, no -journal left


def test_a_report_never_creates_a_database(tmp_path: Path) -> None:
    done = run_cli("--storage", f"sqlite:///{tmp_path / 'typo' / 'studdy.db'}", "--final-seeds", "0",
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
    done = run_cli(*args, cwd=tmp_path, module="study.report")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert flag in done.stderr and "cannot be written" in done.stderr
    assert "final word" not in done.stdout and time.monotonic() - started < 60  # nothing retrained
    assert load(url).user_attrs == before  # no final_test, no note: the study is as it was
