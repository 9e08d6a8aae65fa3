"""The faults a review and a fault probe found (issue 23): a database password printed or stored,
a study name that makes the report write outside ``reports/``, trials failed under a live
worker, storage errors and refusals, degenerate configurations. Each test failed on the code
before its fix."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import optuna
import pytest

from optuna.trial import TrialState

from cli_helpers import (FINISHED, SMALL, leave_free, load, run_cli, run_here, running_trials, small_disk,
                         start_cli, wait_until)


def _made(argv: list[str]) -> bool:
    """A study made for a test to work on, by study.run in this process (a process of its own
    costs 3.6 s of imports, for a step that checks nothing)."""
    from study.run import main

    return main(argv) == 0

pytestmark = pytest.mark.slow


def _everything_stored(url: str, name: str = "mnist-mlp-lr") -> str:
    """Every attr of the study and its trials (the dashboard's note is a system attr), as text."""
    storage = optuna.storages.get_storage(url)
    study_id = storage.get_study_id_from_name(name)
    parts = [storage.get_study_user_attrs(study_id), storage.get_study_system_attrs(study_id)]
    for t in storage.get_all_trials(study_id):
        parts += [t.user_attrs, t.system_attrs, t.params]
    return json.dumps(parts, default=str)


# (shape, how the URL holds it, the strings that must never appear): the server trusts every
# password, so each shape connects, but a raw "@" (libpq cuts the password at the first one)
PASSWORDS = [
    ("plain", "lrstudy:S3cretPassw0rd@", ["S3cretPassw0rd"]),
    ("space and quote", "lrstudy:Sec ret'PW0@", ["Sec ret'PW0", "ret'PW0"]),
    ("raw @", "lrstudy:p@ssw0rd@x@", ["p@ssw0rd@x", "ssw0rd@x"]),
    ("percent-encoded", "lrstudy:p%40ss%20w0rd@", ["p%40ss%20w0rd", "p@ss w0rd"]),
    ("query", "lrstudy@", ["Qu3ry'pw0rd"]),
]


@pytest.mark.parametrize("shape, userinfo, secrets", PASSWORDS, ids=[p[0] for p in PASSWORDS])
def test_the_database_password_is_never_printed_nor_stored(postgres_url: str, tmp_path: Path, shape: str,
                                                          userinfo: str, secrets: list[str]) -> None:
    """The password was printed four times by study.run and stored in the study's command attrs,
    so every report page, summary.md and the dashboard note showed it; then a password with a
    space, a quote or a raw "@" still was (masking stopped at the first such character)."""
    url = postgres_url.replace("://lrstudy@", f"://{userinfo}")
    if shape == "query":
        url += "?password=Qu3ry'pw0rd"
    outputs = []
    run = run_here("--storage", url, "--trials", "2", *SMALL, cwd=tmp_path)
    outputs.append(run.stdout + run.stderr)
    if shape == "raw @":  # not a URL the server can be reached at: one line, still masked
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert all(secret not in run.stdout + run.stderr for secret in secrets), run.stderr
        return
    assert run.returncode == 0, run.stderr
    assert "***" in run.stdout  # said, with the password hidden
    # a study made before passwords were hidden: its stored command holds the password
    load(url).set_user_attr("command", f"python -m study.run --storage {url} --trials 2")
    other = run_here("--storage", url, "--trials", "2", "--epochs", "3", "--train-samples", "2000", "--device", "cpu",
                    cwd=tmp_path)
    assert other.returncode == 2 and "another experiment" in other.stderr
    outputs.append(other.stdout + other.stderr)
    report = run_here("--storage", url, "--final-seeds", "0", cwd=tmp_path, module="study.report")
    assert report.returncode == 0, report.stderr
    outputs.append(report.stdout + report.stderr)
    missing = run_here("--storage", url, "--study-name", "nope", "--final-seeds", "0", cwd=tmp_path,
                      module="study.report")
    assert missing.returncode == 2
    outputs.append(missing.stdout + missing.stderr)
    stored = _everything_stored(url)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "index.html" for p in written)
    for secret in secrets:
        for text in outputs:
            assert secret not in text, text
        assert secret not in stored
        for path in written:
            assert secret.encode() not in path.read_bytes(), path
    assert "***" in load(url).user_attrs["command"]


def test_a_study_name_never_makes_the_report_write_outside_reports(tmp_path: Path) -> None:
    """A study named by an absolute path (or holding ``..``) made study.report overwrite
    index.html and trials.csv in that folder; a folder it did not make is never overwritten."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "index.html").write_text("mine")
    work = tmp_path / "work"
    work.mkdir()
    url = f"sqlite:///{tmp_path / 's.db'}"
    names = [str(victim), "../victim"]
    for name in names:
        run = run_here("--storage", url, "--study-name", name, "--trials", "1", *SMALL, cwd=work)
        assert run.returncode == 0, run.stderr
        line = next(x for x in run.stdout.splitlines() if x.startswith("report: "))
        command = shlex.split(line.removeprefix("report: ").split("  (")[0])  # pasted into a shell
        assert command[command.index("--study-name") + 1] == name and "(writes reports/" in line, line
        report = run_here("--storage", url, "--study-name", name, "--final-seeds", "0", cwd=work, module="study.report")
        assert report.returncode == 0, report.stderr
    assert [p.name for p in victim.iterdir()] == ["index.html"] and (victim / "index.html").read_text() == "mine"
    folders = sorted(p for p in (work / "reports").iterdir())
    assert len(folders) == 2 and all((p / "index.html").is_file() for p in folders), folders
    assert not (tmp_path / "reports").exists() and not (tmp_path / "victim" / "trials.csv").exists()
    # --out onto a folder of someone else's files: refused in one line, the files untouched
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep")
    refused = run_here("--storage", url, "--study-name", names[0], "--final-seeds", "0", "--out", str(mine),
                      cwd=work, module="study.report")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "did not write" in refused.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["todo.txt"]
    # --out onto another study's report: replaced, and said
    replaced = run_here("--storage", url, "--study-name", names[1], "--final-seeds", "0", "--out", str(folders[0]),
                       cwd=work, module="study.report")
    assert replaced.returncode == 0 and "replaced by study" in replaced.stderr, replaced.stderr


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_a_trial_failed_by_another_process_is_dropped_and_the_worker_goes_on(tmp_path: Path, parallel: str) -> None:
    """A worker whose trial another process failed (its heartbeat check after a pause past the
    grace period, or an operator) exited 1 with Optuna's "Cannot tell a FAIL trial", one trial
    at a time and fused, throwing away its other trials."""
    url = f"sqlite:///{tmp_path / 'f.db'}"
    proc = start_cli("--storage", url, "--trials", "4", "--parallel-trials", parallel, "--epochs", "6",
                     "--train-samples", "2000", "--device", "cpu", "--pruner", "none", cwd=tmp_path)
    first = wait_until(lambda: next((t for t in running_trials(url) if len(t.intermediate_values) >= 1), None),
                       proc, what="a trial mid-training")
    storage = optuna.storages.get_storage(url)
    storage.set_trial_state_values(first._trial_id, TrialState.FAIL)  # as fail_stale_trials does
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert f"trial {first.number} was finished by another process" in err and "Traceback" not in err, err
    trials = load(url).trials
    assert trials[first.number].state == TrialState.FAIL
    assert sum(t.state in FINISHED for t in trials) == 4


def test_heartbeats_outlive_a_transient_storage_error(tmp_path: Path) -> None:
    """The fused engine's heartbeat thread (and Optuna's, one trial at a time) died on its first
    error with a thread traceback, and no trial in flight had a heartbeat again."""
    import contextlib
    import sqlite3
    import threading
    import time
    from datetime import datetime, timezone

    from optuna.storages._heartbeat import get_heartbeat_thread

    from storage import open_storage
    from study.recovery import Heartbeats

    path = tmp_path / "h.db"
    said: list[tuple[threading.Thread, str]] = []  # the thread whose beat failed, and the reason

    def heard(reason: str) -> None:
        said.append((threading.current_thread(), reason))

    storage = open_storage(f"sqlite:///{path}", heartbeat_interval=1, lock_timeout=0.2, on_heartbeat_error=heard)
    study = optuna.create_study(storage=storage)
    fused, alone = study.ask(), study.ask()
    errors: list[threading.ExceptHookArgs] = []
    threading.excepthook = errors.append
    try:
        with Heartbeats(storage) as beats:
            beats.add(fused._trial_id)
            optuna_thread = get_heartbeat_thread(alone._trial_id, storage)
            optuna_thread.start()
            locker = sqlite3.connect(path, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")  # every write waits 0.2 s, then fails: "database is locked"
            # until a beat of each thread has failed (retried, then given up until the next beat)
            wait_until(lambda: {beats._thread, optuna_thread._thread} <= {thread for thread, _ in said}, timeout=30,
                       what="a failed heartbeat in both threads")
            locker.execute("ROLLBACK")
            locker.close()
            released = time.time()

            def beaten_since() -> bool:  # both trials beat again after the lock went away
                with contextlib.closing(sqlite3.connect(path)) as db:
                    at = dict(db.execute("SELECT trial_id, heartbeat FROM trial_heartbeats"))
                return all(t._trial_id in at and datetime.fromisoformat(at[t._trial_id]).replace(
                    tzinfo=timezone.utc).timestamp() > released - 0.5 for t in (fused, alone))

            wait_until(beaten_since, timeout=30, what="heartbeat of both trials after the lock")  # a beat a second
            beat_thread = beats._thread
            assert beat_thread.is_alive() and optuna_thread._thread.is_alive()
            optuna_thread.join()
    finally:
        threading.excepthook = threading.__excepthook__
    assert not errors, errors[0].exc_value
    assert said and all("locked" in reason for _, reason in said), said


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_a_transient_storage_error_fails_the_trials_in_flight_and_queues_them_again(
        tmp_path: Path, monkeypatch, capsys, parallel: str) -> None:
    """The trials in flight were told FAIL on the way out (Optuna's _run_trial; the fused loop's
    _fail_all), then only RUNNING trials were queued again: none were. The fault is injected
    once, at the second write of an epoch's values, as a disk I/O error from SQLite."""
    import sqlite3

    import sqlalchemy

    import study.parallel as parallel_module
    from study.run import main

    calls = []

    def once(real):
        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("disk I/O error"))
            return real(*args, **kwargs)
        return failing

    if parallel == "1":
        monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_intermediate_value",
                            once(optuna.storages.RDBStorage.set_trial_intermediate_value))
    else:
        monkeypatch.setattr(parallel_module, "write_trials", once(parallel_module.write_trials))
    url = f"sqlite:///{tmp_path / 't.db'}"
    args = ["--trials", "3", "--parallel-trials", parallel, "--storage", url, "--pruner", "none",
            "--epochs", "3", "--train-samples", "2000", "--device", "cpu"]
    assert main(args) == 3
    assert "disk I/O error" in capsys.readouterr().err
    trials = load(url).trials
    hit = [t for t in trials if t.state == TrialState.FAIL]
    retries = [t for t in trials if t.state == TrialState.WAITING and "failed_trial" in t.system_attrs]
    assert len(hit) == int(parallel) and sorted(t.system_attrs["failed_trial"] for t in retries) == [t.number for t in hit]
    assert main(args) == 0  # the retries run, and the study reaches its target
    trials = load(url).trials
    assert all(t.state in FINISHED for t in trials if t.system_attrs.get("failed_trial") is not None)
    assert sum(t.state in FINISHED for t in trials) >= 3


def test_a_unique_key_error_in_a_boundary_write_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    """write_trials ran in Optuna's scoped session with ignore_integrity_error=True: a unique-key
    error (another process writing the same row first) rolled back the K values and the rung
    records of a boundary while it reported success. The error is injected once, in the
    transaction, where a racing writer's row would raise it."""
    import sqlalchemy

    from storage import open_storage
    from storage.batch import TrialWrites, rdb_backend, write_trials

    storage = open_storage(f"sqlite:///{tmp_path / 'w.db'}")
    study = optuna.create_study(storage=storage)
    trials = [study.ask() for _ in range(3)]
    backend = rdb_backend(storage)
    real, raised = backend._set_trial_attr_without_commit, []

    def racing(session, model, trial_id, key, value):
        if not raised:
            raised.append(key)
            raise sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))
        return real(session, model, trial_id, key, value)

    monkeypatch.setattr(backend, "_set_trial_attr_without_commit", racing)
    writes = TrialWrites(intermediate_values=[(t._trial_id, 1, 0.5 + i) for i, t in enumerate(trials)],
                         system_attrs=[(trials[0]._trial_id, "completed_rung_0", 0.5)])
    writes.add_user_attrs(trials[1]._trial_id, {"lr": 0.1})
    write_trials(storage, writes)
    assert raised
    stored = {t.number: t for t in optuna.load_study(study_name=study.study_name, storage=storage.url).trials}
    assert [stored[t.number].intermediate_values for t in trials] == [{1: 0.5}, {1: 1.5}, {1: 2.5}]
    assert stored[trials[0].number].system_attrs["completed_rung_0"] == 0.5
    assert stored[trials[1].number].user_attrs["lr"] == 0.1


def _interrupted(proc, sig) -> tuple[int, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("module", ["study.run", "study.report", "study.lr_range"])
def test_ctrl_c_during_the_imports_is_one_line_and_130(tmp_path: Path, module: str) -> None:
    """Ctrl-C while torch was being imported (the first seconds of every command) printed a
    KeyboardInterrupt traceback and exited 1."""
    import signal
    import time

    from cli_helpers import start_cli

    for sig in (signal.SIGINT, signal.SIGTERM):
        # a new interpreter: the zygote's children have imported before they start
        proc = start_cli("--device", "cpu", cwd=tmp_path, module=module, fresh=True)
        time.sleep(0.5)  # inside `import torch`, which takes seconds
        code, err = _interrupted(proc, sig)
        assert code == 130 and err.strip() == "interrupted while starting: nothing was read or written", (sig, code, err)


def test_ctrl_c_in_the_report_and_the_range_test_is_one_line_and_130(tmp_path: Path) -> None:
    """study.report and study.lr_range had no handler: a traceback, exit 1 (SIGTERM: killed)."""
    import signal

    from cli_helpers import start_cli

    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert _made(["--storage", url, "--trials", "1", *SMALL])
    # SIGINT for one command, SIGTERM for the other, then the other way round (both handlers are
    # the same for all three commands: study.interrupt)
    for sig, other in ((signal.SIGINT, signal.SIGTERM),):
        proc = start_cli("--storage", url, "--final-seeds", "2", "--device", "cpu", "--out", str(tmp_path / "r"),
                         cwd=tmp_path, module="study.report")
        assert "final word" in proc.stdout.readline()  # retraining the candidates
        code, err = _interrupted(proc, sig)
        assert code == 130 and len(err.strip().splitlines()) == 1 and "the report was not finished" in err, (code, err)
        assert "final_test" not in load(url).user_attrs
        proc = start_cli("--start-lr", "1e-7", "--end-lr", "2e-7", "--steps", "100000", "--device", "cpu", "--out",
                         str(tmp_path / "lr.html"), cwd=tmp_path, module="study.lr_range")
        assert proc.stdout.readline().startswith("range test: ")  # past the imports and the data: 100,000 steps to go
        code, err = _interrupted(proc, other)
        assert code == 130 and err.strip() == "interrupted: the range test stopped; nothing was written", (code, err)
        assert not (tmp_path / "lr.html").exists()


def test_a_signal_as_a_finished_report_exits_changes_nothing(tmp_path: Path) -> None:
    """SIGTERM in the last moments of a report that had written everything: Python's exit puts the
    default action back for signals it handles, so the process was killed (-15) or an atexit
    callback printed a KeyboardInterrupt; now the command ignores them once its work is done."""
    import signal
    import time

    from cli_helpers import start_cli

    url = f"sqlite:///{tmp_path / 'e.db'}"
    assert _made(["--storage", url, "--trials", "1", *SMALL])
    out = tmp_path / "r"
    proc = start_cli("--storage", url, "--final-seeds", "0", "--out", str(out), cwd=tmp_path, module="study.report")
    lines = []
    for line in proc.stdout:  # its last line: every file written, the study's note stored
        lines.append(line)
        if line.startswith("inspect:"):
            break
    assert lines and lines[-1].startswith("inspect:"), "".join(lines)
    while proc.poll() is None:  # a storm of signals through the exit
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            break
        time.sleep(0.001)
    err = proc.stderr.read()
    proc.wait()
    assert proc.returncode == 0, (proc.returncode, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert (out / "index.html").is_file()


def test_degenerate_configs_are_refused_or_trained_the_same_by_both_engines(mnist_2k) -> None:
    """Found by the probe: train_many(slots=0) was accepted; a NumPy float32 LR was refused; an
    LR past float32 raised an overflow deep in train where train_many reported divergence; a
    one-cycle whose rise is exactly one step long divided by zero; seed=2**64-1 overflowed only
    in trial 1, without naming the seed; the LR range test from 1e-320 suggested inf."""
    import math

    import numpy as np

    from objectives import MnistMLPObjective, TrainConfig, train, train_many
    from objectives.lr_range import lr_range_test

    config = TrainConfig(lr=np.float32(0.1), lr_mult_fc1=np.float64(2.0), step_size=np.int64(3))
    assert type(config.lr) is float and type(config.step_size) is int and config.lr == pytest.approx(0.1)
    with pytest.raises(ValueError, match="slots must be an int >= 1, but got slots=0"):
        train_many([TrainConfig()], mnist_2k, 1, slots=0)
    for bad in (dict(lr=1e39), dict(lr=1e38, lr_mult_fc2=10.0), dict(weight_decay=1e39)):
        with pytest.raises(ValueError, match="must fit in float32"):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 4294967295\], but got seed=18446744073709551615"):
        MnistMLPObjective(1, seed=2**64 - 1, device="cpu")
    with pytest.raises(ValueError, match="start_lr"):
        lr_range_test("sgd", mnist_2k, start_lr=1e-320)
    # one-cycle over 2 steps with pct_start 0.5: a rise of exactly one step (torch divides by zero)
    onecycle = TrainConfig(lr=0.1, decay="onecycle", onecycle_pct_start=0.5, batch_size=2000)
    alone, fused = train(onecycle, mnist_2k, 1), train_many([onecycle], mnist_2k, 1)[0]
    assert math.isfinite(alone.val_losses[0]) and alone.val_losses == pytest.approx(fused.val_losses, rel=1e-4)


def test_resumes_and_joins_that_would_mix_experiments_are_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    """A resume with another --seed was accepted (the minibatch order changed mid-study); another
    --sampler or --pruner was accepted silently; a creator that stalled past the creation wait
    overwrote the settings a joiner had recorded; study.report on a plain Optuna or a
    multi-objective study, and study.run on a multi-objective one, were tracebacks."""
    from study.experiment import UsageError, _record_settings
    from study.report import main as report_main
    from study.run import main

    url = f"sqlite:///{tmp_path / 'r.db'}"
    args = ["--storage", url, "--trials", "1", *SMALL]
    assert main(args) == 0
    capsys.readouterr()
    before = load(url).user_attrs
    assert main([*args, "--seed", "1", "--trials", "2"]) == 2
    assert "seed: stored 0, now 1" in capsys.readouterr().err
    assert main([*args, "--trials", "2", "--sampler", "random", "--pruner", "none"]) == 0
    out = capsys.readouterr().out
    assert "this run's --sampler is random; the study began with tpe" in out and "--pruner is none" in out
    study = load(url)
    assert study.user_attrs["samplers"] == ["tpe", "random"] and study.user_attrs["pruners"] == ["median", "none"]
    assert [(t.user_attrs["sampler"], t.user_attrs["pruner"]) for t in study.trials] == [("tpe", "median"), ("random", "none")]
    unchanged = set(before) - {"last_command", "trial_epochs"}  # the settings: as the first run recorded them
    assert {k: study.user_attrs[k] for k in unchanged} == {k: before[k] for k in unchanged}
    # a creator that stalled while a joiner with other settings recorded them: refused, nothing overwritten
    joiner = optuna.create_study(storage=url, study_name="raced")
    _record_settings(joiner, {"epochs": 2, "metric": "last_val_error", "fingerprint": {"epochs": 2}})
    with pytest.raises(UsageError, match=r"another process .* \(epochs: stored 2, this run 5\)"):
        _record_settings(optuna.load_study(study_name="raced", storage=url),
                         {"epochs": 5, "metric": "last_val_error", "fingerprint": {"epochs": 5}})
    assert load(url, "raced").user_attrs == {"epochs": 2, "metric": "last_val_error", "fingerprint": {"epochs": 2}}
    # other programs' studies
    optuna.create_study(storage=url, study_name="plain").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    multi = optuna.create_study(storage=url, study_name="multi", directions=["minimize", "minimize"])
    multi.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=1)
    capsys.readouterr()
    for name, says in (("plain", "was not created by study.run"), ("multi", "has 2 objectives")):
        assert report_main(["--storage", url, "--study-name", name, "--final-seeds", "0",
                            "--out", str(tmp_path / name)]) == 2
        assert says in capsys.readouterr().err
    assert main([*args, "--study-name", "multi"]) == 2 and "has 2 objectives" in capsys.readouterr().err


def test_processes_started_with_the_same_command_sample_different_configurations(tmp_path: Path) -> None:
    """The multi-machine recipe runs one command, one --seed, everywhere: every process drew the
    same configurations (4 processes on PostgreSQL: 7 trials, 2 distinct)."""
    from cli_helpers import start_cli

    url = f"sqlite:///{tmp_path / 'm.db'}"
    command = ["--storage", url, "--trials", "6", "--epochs", "1", "--train-samples", "2000", "--device", "cpu",
               "--pruner", "none", "--threads", "1"]
    procs = [start_cli(*command, cwd=tmp_path) for _ in range(3)]
    said = [(proc.communicate(timeout=300), proc.returncode) for proc in procs]  # what each said, for a failure
    assert all(code == 0 for _, code in said), said
    trials = load(url).trials
    configs = [tuple(sorted(t.params.items())) for t in trials]
    assert len(trials) >= 6 and len(set(configs)) == len(configs), (configs, said)


def test_a_live_trial_of_another_pid_namespace_is_not_taken_for_an_orphan(tmp_path: Path) -> None:
    """Two processes on hosts of the same name in different PID namespaces (containers with host
    networking): the other's PID does not exist here, so its live trial was failed as an orphan."""
    import os
    import shutil
    import signal
    import sys

    from cli_helpers import ENV, wait_for_running
    from study.recovery import _alive

    if shutil.which("unshare") is None or subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                                                         capture_output=True).returncode != 0:
        pytest.skip("unshare cannot make a PID namespace here")
    url = f"sqlite:///{tmp_path / 'n.db'}"
    # trials of about 4 s, the inner one RUNNING while the outer run starts (it settles orphans first)
    args = ["--storage", url, "--trials", "3", "--epochs", "20", "--train-samples", "2000", "--device", "cpu",
            "--pruner", "none", "--threads", "1"]
    # pid 1 in the namespace is sh; the study gets a pid past the ones sh forks first
    inner = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c",
                              "for i in $(seq 500); do /bin/true; done; \"$@\"", "sh", sys.executable, "-m", "study.run",
                              *args], cwd=tmp_path, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        trial = wait_for_running(url, inner)
        pid = int(trial.user_attrs["worker"].rpartition(":")[2])
        if _alive(pid):
            pytest.skip(f"pid {pid} of the namespace also names a live process here")
        # in this PID namespace, as a process would be; its one trial (the timeout counts from before
        # the first trial) validates on 2,000 images, as the inner one (in ENV) does not: what
        # matters is what it did to the other's, RUNNING for about 4 s
        outer = run_here(*args, "--timeout", "0.001", cwd=tmp_path)
        assert outer.returncode == 0, outer.stderr
        assert "left RUNNING by a dead process" not in outer.stdout
        assert load(url).trials[trial.number].state in (TrialState.RUNNING, TrialState.COMPLETE)  # never FAIL
    finally:
        os.killpg(inner.pid, signal.SIGKILL)
        inner.communicate()


def test_out_of_memory_of_many_trials_at_once_halves_the_slots_instead_of_stopping(tmp_path: Path, monkeypatch,
                                                                                     capsys) -> None:
    """With 5 or more trials in flight the CPU allocator's failure failed 5 trials at once, which
    the worker counted as 5 failures in a row: it stopped (exit 1) instead of halving the slots.
    The failure is injected as the CPU allocator words it."""
    import objectives.stack as stack_module
    from study.run import main

    real_update, sizes = stack_module.Stack.update, []

    def update_with_oom(self, *args):
        sizes.append(len(self.trials))
        if len(self.trials) > 3:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes. "
                               "Error code 12 (Cannot allocate memory)")
        return real_update(self, *args)

    monkeypatch.setattr(stack_module.Stack, "update", update_with_oom)
    url = f"sqlite:///{tmp_path / 'oom.db'}"
    assert main(["--trials", "8", "--parallel-trials", "8", "--storage", url, "--pruner", "none", *SMALL]) == 0
    trials = load(url).trials
    assert sum(t.state in FINISHED for t in trials) == 8
    assert [t.user_attrs.get("out_of_memory_slots") for t in trials if t.state == TrialState.FAIL] == [8] * 8 + [4] * 4
    assert max(sizes[-3:]) <= 2  # 8, then 4, then 2 that fit


def test_an_out_of_memory_chained_under_another_error_is_found() -> None:
    """An out-of-memory raised inside a CUDA graph capture surfaces as the cause or context of
    the capture's own error: as_out_of_memory looked at the outer error only."""
    import torch

    from objectives.device import as_out_of_memory

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    try:
        try:
            raise oom
        except torch.OutOfMemoryError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")  # noqa: B904
    except RuntimeError as chained:
        assert as_out_of_memory(chained) is oom
    caused = RuntimeError("capture failed")
    caused.__cause__ = MemoryError()
    assert isinstance(as_out_of_memory(caused), torch.OutOfMemoryError)
    assert as_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


def test_a_read_only_or_damaged_storage_is_one_line_and_left_as_it_is(postgres_url: str, tmp_path: Path) -> None:
    """A PostgreSQL study opened read-only (default_transaction_read_only=on) was a traceback and
    exit 1 from the first write; a SQLite file with garbage in its middle was written into
    (and failed later with a traceback)."""
    import hashlib

    assert _made(["--storage", postgres_url, "--trials", "1", *SMALL])
    before = _everything_stored(postgres_url)
    read_only = postgres_url + "?options=-c%20default_transaction_read_only%3Don"
    for module in ("study.run", "study.report"):
        # the report finds it before its final word (it trained it all, then failed, leaving its artifact)
        done = run_here("--storage", read_only, "--trials", "2", *SMALL, cwd=tmp_path, module=module) \
            if module == "study.run" else \
            run_here("--storage", read_only, "--final-seeds", "1", "--device", "cpu", "--out", str(tmp_path / "r"),
                     "--artifact-dir", str(tmp_path / "a"), cwd=tmp_path, module=module)
        assert done.returncode in (2, 3) and len(done.stderr.strip().splitlines()) == 1, (module, done.stderr)
        assert "read-only transaction" in done.stderr and "Traceback" not in done.stderr
    assert "final word" not in done.stdout and not list((tmp_path / "a").iterdir()), done.stdout
    assert _everything_stored(postgres_url) == before

    path = tmp_path / "d.db"
    assert run_here("--storage", f"sqlite:///{path}", "--trials", "2", *SMALL, cwd=tmp_path).returncode == 0  # closed: no WAL
    assert not path.with_name("d.db-wal").exists() or path.with_name("d.db-wal").stat().st_size == 0
    with open(path, "r+b") as f:  # garbage over the second page (a b-tree page of Optuna's tables)
        f.seek(4096)
        f.write(bytes(range(256)) * 16)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for module, extra in (("study.run", ["--trials", "3", *SMALL]), ("study.report", ["--final-seeds", "0"])):
        done = run_here("--storage", f"sqlite:///{path}", *extra, cwd=tmp_path, module=module)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, (module, done.stderr)
        assert "damaged" in done.stderr
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_an_immutable_database_is_one_line_and_left_as_it_is(tmp_path: Path) -> None:
    """A SQLite study whose files were made immutable (chattr +i): a traceback and exit 1. Closed
    (the file alone), and as a killed run leaves it (frames in its -wal, the -shm beside it),
    which was reported to end in SIGBUS at exit in 2 of 3 runs: each a real process, so that a
    signal at its exit shows in the exit code."""
    import hashlib
    import shutil
    import sqlite3

    path = tmp_path / "i.db"
    assert run_here("--storage", f"sqlite:///{path}", "--trials", "1", *SMALL, cwd=tmp_path).returncode == 0  # no WAL
    # a killed run's files: a copy with a frame in its -wal, copied with the -shm while open
    scratch, killed = tmp_path / "w.db", tmp_path / "k.db"
    shutil.copy(path, scratch)
    connection = sqlite3.connect(scratch)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.execute("UPDATE studies SET study_name = study_name")
    connection.commit()
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(f"{scratch}{suffix}", f"{killed}{suffix}")
    connection.close()
    files = [path, killed, Path(f"{killed}-wal"), Path(f"{killed}-shm")]
    assert all(f.stat().st_size for f in files)
    if subprocess.run(["chattr", "+i", *map(str, files)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i needs root on a file system with attributes")
    try:
        digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
        for db in (path, killed):
            for module, extra, code in (("study.run", ["--trials", "2", *SMALL], 2),
                                        ("study.report", ["--final-seeds", "0"], 3)):
                done = run_cli("--storage", f"sqlite:///{db}", *extra, cwd=tmp_path, module=module)
                assert done.returncode == code and len(done.stderr.strip().splitlines()) == 1, (db, module, done)
                assert "readonly database" in done.stderr
        assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == digests
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], capture_output=True)


def test_a_link_planted_in_a_report_folder_is_replaced_not_written_through(tmp_path: Path) -> None:
    """index.html replaced by a link to another file: the next report overwrote that file with
    the page. Every file of the report is now written beside its name and moved over it."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert run_here("--storage", url, "--trials", "1", *SMALL, cwd=tmp_path).returncode == 0
    out = tmp_path / "r"
    first = run_here("--storage", url, "--final-seeds", "0", "--out", str(out), cwd=tmp_path, module="study.report")
    assert first.returncode == 0, first.stderr
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    for name in ("index.html", "summary.md", "trials.csv"):
        (out / name).unlink()
        (out / name).symlink_to(victim)
    again = run_here("--storage", url, "--final-seeds", "0", "--out", str(out), cwd=tmp_path, module="study.report")
    assert again.returncode == 0, again.stderr
    assert victim.read_text() == "mine"
    for name in ("index.html", "summary.md", "trials.csv"):
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_two_storages_with_one_study_name_do_not_share_a_report_silently(tmp_path: Path) -> None:
    """The marker held the study's name only: the second storage's report replaced the first's
    folder without a word."""
    urls = [f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db")]
    for url in urls:
        assert run_here("--storage", url, "--trials", "1", *SMALL, cwd=tmp_path).returncode == 0
    first = run_here("--storage", urls[0], "--final-seeds", "0", cwd=tmp_path, module="study.report")
    assert first.returncode == 0 and "replaced" not in first.stderr, first.stderr
    again = run_here("--storage", urls[0], "--final-seeds", "0", cwd=tmp_path, module="study.report")
    assert again.returncode == 0 and "replaced" not in again.stderr  # its own report: no word
    other = run_here("--storage", urls[1], "--final-seeds", "0", cwd=tmp_path, module="study.report")
    assert other.returncode == 0 and "replaced by study 'mnist-mlp-lr'" in other.stderr, other.stderr
    assert urls[0] in other.stderr


def test_an_out_name_too_long_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert run_here("--storage", url, "--trials", "1", *SMALL, cwd=tmp_path).returncode == 0
    done = run_here("--storage", url, "--final-seeds", "0", "--out", str(tmp_path / ("x" * 300)), cwd=tmp_path,
                    module="study.report")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--out" in done.stderr and "Traceback" not in done.stderr


def test_a_full_disk_while_the_report_writes_is_one_line_and_the_page_before_stays_whole(tmp_path: Path) -> None:
    """--out on a disk that fills: an OSError traceback after the whole final word, and a
    truncated index.html. Now one line, exit 3, and the previous page as it was."""
    import hashlib

    with small_disk(tmp_path, "12m") as disk:
        url = f"sqlite:///{tmp_path / 's.db'}"
        assert run_here("--storage", url, "--trials", "1", *SMALL, cwd=tmp_path).returncode == 0
        args = ["--storage", url, "--final-seeds", "0", "--out", str(disk / "r"), "--artifact-dir", str(tmp_path / "a")]
        first = run_here(*args, cwd=tmp_path, module="study.report")
        assert first.returncode == 0, first.stderr
        page = (disk / "r" / "index.html").read_bytes()
        leave_free(disk, 200_000)  # room for the write check, not for a page
        again = run_here(*args, cwd=tmp_path, module="study.report")
        errors = again.stderr.strip().splitlines()
        assert again.returncode == 3 and len(errors) == 1 and "Traceback" not in again.stderr, again.stderr
        assert "could not be written" in errors[0] and str(disk) in errors[0]
        assert hashlib.sha256((disk / "r" / "index.html").read_bytes()).digest() == hashlib.sha256(page).digest()
        assert not [p for p in (disk / "r").iterdir() if p.name.endswith(".tmp")]


def test_a_full_artifact_disk_is_one_line_after_the_studys_records_and_leaves_no_artifact_file(tmp_path: Path) -> None:
    """The page is uploaded as the study's artifact after the study's own writes (the note, the
    final word): a full --artifact-dir is one line naming it, exit 3, and no partial artifact file
    (it was uploaded first, and a failure left a truncated file, or an orphan when the study's
    writes failed after it)."""
    with small_disk(tmp_path, "12m") as disk:
        url = f"sqlite:///{tmp_path / 's.db'}"
        assert run_here("--storage", url, "--trials", "1", *SMALL, cwd=tmp_path).returncode == 0
        store = disk / "a"
        store.mkdir()
        leave_free(disk, 200_000)  # room for the write check, not for a page
        done = run_here("--storage", url, "--final-seeds", "0", "--out", str(tmp_path / "r"), "--artifact-dir",
                        str(store), cwd=tmp_path, module="study.report")
        errors = done.stderr.strip().splitlines()
        assert done.returncode == 3 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
        assert str(store) in errors[0] and "artifact" in errors[0] and "note" in errors[0], errors[0]
        assert not list(store.iterdir())  # no truncated page left
        study = load(url)
        stored = study._storage.get_study_system_attrs(study._study_id)
        assert (tmp_path / "r" / "index.html").is_file() and "# Study" in (tmp_path / "r" / "summary.md").read_text()
        assert any(k.startswith("dashboard:note_str:") for k in stored), stored.keys()  # the note
        assert not any(k.startswith("artifacts:") for k in stored)
