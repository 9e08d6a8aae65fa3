"""`python -m study.run` end to end on the CPU with small budgets, in real SQLite files."""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from cli_helpers import (ENV, FINISHED, SMALL, free_port, load, run_cli, run_here, run_main, snapshot,
                         start_cli, wait_for_running, with_sitecustomize)
from conftest import validating_on_2k
from study.run import main


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A study of 3 finished trials written by study.run in its default place (validated on 2,000
    images, as the tests' studies are: conftest.py)."""
    cwd = tmp_path_factory.mktemp("cli")
    with validating_on_2k():
        done = run_here("--trials", "3", *SMALL, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd, f"sqlite:///{cwd / 'studies' / 'lr-study.db'}"


def test_run_records_trials_and_the_settings_that_reproduce_them(finished_study: tuple[Path, str]) -> None:
    cwd, url = finished_study
    assert (cwd / "studies" / "lr-study.db").is_file()  # the default storage, folder created
    study = load(url)
    assert len(study.get_trials(states=FINISHED)) == 3 and study.metric_names == ["last_val_error"]
    attrs = study.user_attrs
    assert attrs["epochs"] == 2 and attrs["batch_size"] == 128 and attrs["sampler"] == "tpe"
    assert attrs["metric"] == attrs["fingerprint"]["metric"] == "last_val_error"  # the default value
    assert attrs["command"] == "python -m study.run --trials 3 " + " ".join(SMALL)
    assert attrs["data"]["train_samples"] == 2000 and attrs["device"].startswith("cpu")
    assert {"torch", "optuna", "python"} <= set(attrs["versions"])
    for trial in study.get_trials(states=FINISHED):
        assert {"val_accuracy", "epochs_run", "seed", "lr"} <= set(trial.user_attrs) or trial.user_attrs["diverged"]
        assert trial.intermediate_values or trial.user_attrs["diverged"]
    with sqlite3.connect(cwd / "studies" / "lr-study.db") as db:  # WAL, for readers beside writers
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.slow
def test_the_recorded_command_reproduces_the_study(finished_study: tuple[Path, str], tmp_path: Path) -> None:
    # the command in the study's attrs, run again elsewhere: the same trials, to the last digit
    cwd, url = finished_study
    command = shlex.split(load(url).user_attrs["command"])
    assert command[:3] == ["python", "-m", "study.run"]
    again = run_here(*command[3:], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert snapshot(f"sqlite:///{tmp_path / 'studies' / 'lr-study.db'}") == snapshot(url)


def test_the_printed_commands_work_when_pasted_for_a_name_beginning_with_a_dash(tmp_path: Path) -> None:
    """"report: python -m study.report --storage … --study-name -x" was refused by argparse when
    pasted (-x looks like a flag of its own); the stored command, the report line and the
    dashboard line are each taken back by a shell and by the command they name."""
    url = f"sqlite:///{tmp_path / 'studies' / 'odd name.db'}"
    name = "-x'y"
    first = run_here("--trials", "1", "--storage", url, f"--study-name={name}", *SMALL, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    line = next(line for line in first.stdout.splitlines() if line.startswith("report: "))
    pasted = shlex.split(line.removeprefix("report: ").split("  (writes")[0])
    assert pasted[:3] == ["python", "-m", "study.report"], pasted
    report = run_here(*pasted[3:], "--final-seeds", "0", cwd=tmp_path, module="study.report")
    assert report.returncode == 0 and f"study {name!r}" in report.stdout, report.stderr
    command = shlex.split(load(url, name).user_attrs["command"])
    again = run_here(*command[3:], cwd=tmp_path)  # the stored command: resumes the same study
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    dashboard = next(line for line in report.stdout.splitlines() if line.startswith("inspect: "))
    words = shlex.split(dashboard.removeprefix("inspect: "))
    assert words[0] == "optuna-dashboard" and words[1] == f"sqlite:///{tmp_path / 'studies' / 'odd name.db'}"
    assert words[2:] == ["--artifact-dir", str(tmp_path / "studies" / "artifacts")]


def test_rerun_with_same_n_adds_nothing_and_larger_n_resumes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deep' / 'er' / 'study.db'}"
    first = run_here("--trials", "2", "--storage", url, *SMALL, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "inspect: optuna-dashboard sqlite:///" in first.stdout and "[2/2] trial" in first.stdout
    # where the study is and what writes its report, printed at the end
    assert f"study: {(tmp_path / 'deep' / 'er' / 'study.db').resolve()} (SQLite)" in first.stdout
    assert f"report: python -m study.report --storage {url} --study-name mnist-mlp-lr" in first.stdout
    before = snapshot(url)
    again = run_here("--trials", "2", "--storage", url, *SMALL, cwd=tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert snapshot(url) == before
    more = run_here("--trials", "4", "--storage", url, *SMALL, cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    after = snapshot(url)
    assert after[:2] == before and len([t for t in after if t[1] in FINISHED]) == 4
    # the resumed run does not replay the first run's random draws
    assert all(t[3] != old[3] for t in after[2:] for old in before)


BAD_INPUTS = [
    (["--trials", "0"], "--trials"),
    (["--trials", "-5"], "--trials"),
    (["--trials", "abc"], "'abc'"),
    (["--epochs", "0"], "--epochs"),
    (["--sampler", "nope"], "'nope'"),
    (["--pruner", "nope"], "'nope'"),
    (["--device", "tpu"], "device='tpu'"),
    (["--train-samples", "0"], "--train-samples"),
    (["--workers", "0"], "--workers"),
    (["--parallel-trials", "0"], "--parallel-trials"),
    (["--parallel-trials", "many"], "'many'"),
    (["--timeout", "-1"], "--timeout"),
    (["--storage", "nope://x"], "nope://x"),
    (["--storage", "not a url"], "not a url"),
    (["--data-dir", "{empty}"], "MNIST not found"),
    (["--data-dir", "{corrupt}"], "is corrupt"),
    (["--storage", "postgresql+psycopg://lrstudy@127.0.0.1:{closed_port}/db"], "cannot open storage"),
    (["--epochs", "3"], "epochs: stored 2, now 3"),  # same study name, another experiment
    (["--precision", "fp16"], "'fp16'"),
    (["--precision", "bf16"], "precision: stored 'fp32', now 'bf16'"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["--device", "cuda"], "CUDA is not available"))
BAD_INPUTS.append((["--device", "cpu", "--precision", "tf32"], "precision='tf32' is a mode of CUDA"))


@pytest.mark.slow
@pytest.mark.parametrize("args, named", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(finished_study, tmp_path: Path, mnist_copy: Path,
                                                          args, named, monkeypatch, capsys) -> None:
    cwd, url = finished_study
    damaged = mnist_copy / "train-labels-idx1-ubyte.gz"
    damaged.write_bytes(gzip.compress(gzip.decompress(damaged.read_bytes())[:-1] + b"\x07"))
    closed_port = free_port()  # a loopback port with nothing listening
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.replace("{empty}", str(empty)).replace("{corrupt}", str(mnist_copy))
            .replace("{closed_port}", str(closed_port)) for a in args]
    before = snapshot(url)
    # the flags under test come last, so they override the defaults in SMALL; in this process
    # (a refusal costs no interpreter start-up), from the study's folder as a user would run it
    monkeypatch.chdir(cwd)
    started = time.monotonic()
    code, _, err = run_main(["--trials", "5", "--storage", url, *SMALL, *args], capsys)
    assert time.monotonic() - started < 30  # an unreachable server fails fast, never hangs
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert named in lines[0] and "Traceback" not in err
    assert snapshot(url) == before


def test_storage_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("my notes, not a database\n")
    done = run_here("--storage", f"sqlite:///{path}", *SMALL, cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "not a usable SQLite database" in done.stderr
    assert path.read_text() == "my notes, not a database\n"


def test_storage_folder_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = run_here("--storage", f"sqlite:///{tmp_path / 'file' / 'sub' / 'x.db'}", *SMALL, cwd=tmp_path)
    assert done.returncode == 2 and "cannot create the folder" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# each sampler with the default pruner, each pruner with the default sampler
COMBINATIONS = [(s, "median") for s in ("tpe", "random", "cmaes", "gp", "qmc")] + [
    ("tpe", p) for p in ("hyperband", "sha", "patient", "none")]


@pytest.mark.slow
@pytest.mark.parametrize("sampler, pruner", COMBINATIONS)
def test_every_sampler_and_pruner_runs(tmp_path: Path, sampler: str, pruner: str, monkeypatch) -> None:
    """Each pruner is consulted on epochs it may judge. At 2 trials of 2 epochs none could judge
    anything (the median's warm-up is 2 epochs, and the last epoch is never judged), so a pruner
    that was never called passed: trials of 4 epochs, and a count of the calls. For ``median`` the
    rule itself must compare a trial with its peers' bar before the last epoch (5 trials: 4
    trials over 7 strategies never gave it 3 peers, and the queued start, never pruned, is left
    out here); ``patient`` reaches that rule only once a trial stops improving, which 4 epochs do
    not give (tests/test_pruning.py gives it one)."""
    import study.experiment as experiment_module
    import study.pruning as pruning_module
    import study.workers as workers_module

    judged: list[tuple[int, int]] = []
    compared: list[float] = []
    real_make, real_bar = workers_module.make_pruner, pruning_module._percentile_without

    def counted(*args, **kwargs):
        made = real_make(*args, **kwargs)
        real_prune = type(made).prune

        def prune(self, study, trial):
            judged.append((trial.number, trial.last_step))
            return real_prune(self, study, trial)

        monkeypatch.setattr(type(made), "prune", prune)
        return made

    def bar(values, own, q):  # a trial measured against its peers' median (or the fallback's percentile)
        compared.append(q)
        return real_bar(values, own, q)

    monkeypatch.setattr(workers_module, "make_pruner", counted)
    monkeypatch.setattr(pruning_module, "_percentile_without", bar)
    url = f"sqlite:///{tmp_path / 's.db'}"
    trials, epochs = ("2", "2") if pruner == "median" and sampler != "tpe" else ("5", "4") if pruner == "median" \
        else ("4", "4")
    if pruner == "median" and sampler == "tpe":
        monkeypatch.setattr(experiment_module, "start_trials", lambda *args: [])  # sampled trials only
    code = main(["--trials", trials, "--storage", url, "--sampler", sampler, "--pruner", pruner,
                 *SMALL[:1], epochs, *SMALL[2:]])
    assert code == 0
    study = load(url)
    assert len(study.get_trials(states=FINISHED)) == int(trials) and study.user_attrs["sampler"] == sampler
    if pruner in ("hyperband", "sha", "patient") or trials == "5":
        assert any(step < 4 for _, step in judged), judged  # judged before the last epoch
    if trials == "5":
        assert compared, judged  # and the median rule compared a trial with its peers


def test_sampler_without_its_dependency_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "cmaes", None)  # as if not installed
    assert main(["--sampler", "cmaes", "--storage", f"sqlite:///{tmp_path / 's.db'}", *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'lr-study[samplers]'" in err
    assert not (tmp_path / "s.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["1", "2"])
def test_ctrl_c_marks_the_trial_failed_exits_130_and_rerun_completes(tmp_path: Path, parallel: str) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    # trials of a few seconds (15 epochs), so that the signal lands in one, and the rerun in this
    # process (what it stores is the point; the signal's process is the one above), validating
    # on 2,000 images (the trials the signal ended have no value to compare with)
    args = ["--trials", "2", "--storage", url, "--epochs", "15", "--train-samples", "2000", "--device", "cpu",
            "--pruner", "none", "--parallel-trials", parallel]
    proc = start_cli(*args, cwd=tmp_path)
    wait_for_running(url, proc, count=int(parallel))  # every slot training
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "run the same command to resume" in err
    trials = load(url).trials
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.FAIL in states
    if parallel == "2":  # both trials were in flight: both are failed, none left RUNNING
        assert states.count(TrialState.FAIL) == 2
    # each interrupted trial says why (the dashboard and trials.csv show it) and is queued again
    # once with its configuration, for the rerun to take first (before: no reason, no retry)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("error") == "interrupted" for t in failed)
    queued = {t.system_attrs["failed_trial"]: t for t in trials
              if t.state == TrialState.WAITING and "failed_trial" in t.system_attrs}  # not the queued start
    assert sorted(queued) == [t.number for t in failed] and all(queued[t.number].params == t.params for t in failed)
    again = run_here(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    trials = load(url).trials
    states = [t.state for t in trials]
    assert sum(s in FINISHED for s in states) >= 2 and TrialState.RUNNING not in states
    assert all(trials[t.number].state in FINISHED for t in queued.values())  # the retries ran


@pytest.mark.parametrize("parallel", ["1", "2"])
@pytest.mark.parametrize("origin", ["queued", "new"])  # trial 2 taken from the new study's queue, or made new
def test_an_interruption_while_a_trial_is_drawn_fails_and_queues_it_never_leaves_it_running(
        tmp_path: Path, monkeypatch, capsys, parallel: str, origin: str) -> None:
    """Ctrl-C or SIGTERM inside ``study.ask`` (the trial's row written, the sampler starting on it)
    left that trial RUNNING and claimed by no process, one trial at a time and fused: Optuna fails
    only the trials its objective runs. The next run then waited a grace period for it; a
    SIGTERM'd ``--workers`` run once ended so (tests/test_reliability.py's SIGTERM test). A new
    trial (a resume queues nothing) goes through another storage call than a queued one."""
    import study.workers as workers_module

    real = workers_module.make_sampler

    def interrupted_at_trial_2(*args, **kwargs):
        sampler = real(*args, **kwargs)
        before = sampler.before_trial  # called by study.ask once the trial's row is written

        def before_trial(study, trial):
            if trial.number == 2:
                raise KeyboardInterrupt  # as the handler of SIGINT or SIGTERM raises it
            return before(study, trial)

        sampler.before_trial = before_trial
        return sampler

    url = f"sqlite:///{tmp_path / 's.db'}"
    if origin == "new":
        assert main(["--trials", "2", *SMALL, "--storage", url]) == 0
    monkeypatch.setattr(workers_module, "make_sampler", interrupted_at_trial_2)
    code, out, err = run_main(["--trials", "4", *SMALL, "--storage", url, "--parallel-trials", parallel], capsys)
    assert code == 130, err
    trials = load(url).trials
    assert TrialState.RUNNING not in [t.state for t in trials], [(t.number, t.state) for t in trials]
    drawn = trials[2]
    assert drawn.state == TrialState.FAIL and drawn.user_attrs["error"] == "interrupted"
    assert drawn.user_attrs["worker"] == trials[0].user_attrs["worker"]  # claimed by the process
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 2]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING  # the next run takes it first


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_an_interruption_as_the_objective_starts_fails_names_and_queues_the_trial(
        tmp_path: Path, monkeypatch, capsys, parallel: str) -> None:
    """A signal after ``ask``, as the trial's objective starts (before it wrote which process runs
    it: the first thing it does): Optuna failed the trial with no ``worker`` and no ``error``, and
    nothing queued it again (``test_sigterm_of_workers_…`` in tests/test_reliability.py found such
    a trial). The storage now names the process as it sets the trial RUNNING."""
    import study.parallel as parallel_module
    import study.workers as workers_module

    module = workers_module if parallel == "1" else parallel_module
    real, starts = module.write_user_attrs, []

    def interrupted_at_the_third_start(storage, trial_id, attrs):
        if "threads" in attrs:  # the objective's first write: the trial's process and its threads
            starts.append(trial_id)
            if len(starts) == 3:
                raise KeyboardInterrupt  # as the handler of SIGINT or SIGTERM raises it
        return real(storage, trial_id, attrs)

    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["--trials", "1", *SMALL, "--storage", url]) == 0  # the resume's trials are new ones
    monkeypatch.setattr(module, "write_user_attrs", interrupted_at_the_third_start)
    code, out, err = run_main(["--trials", "5", *SMALL, "--storage", url, "--parallel-trials", parallel], capsys)
    assert code == 130, err
    trials = load(url).trials
    assert TrialState.RUNNING not in [t.state for t in trials], [(t.number, t.state) for t in trials]
    assert all("worker" in t.user_attrs for t in trials if t.state != TrialState.WAITING)
    failed = [t for t in trials if t.state == TrialState.FAIL]  # fused: the other trial in flight too
    assert starts[2] in [t._trial_id for t in failed]
    for cut in failed:
        assert cut.user_attrs["worker"] == trials[0].user_attrs["worker"]  # claimed by the process
        retry = [t for t in trials if t.system_attrs.get("failed_trial") == cut.number]
        assert len(retry) == 1 and retry[0].state == TrialState.WAITING  # the next run takes it first


@pytest.mark.slow
def test_workers_share_the_budget(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    # trials of about a second, so that a worker that starts late still finds work
    args = ["--epochs", "6", "--train-samples", "2000", "--device", "cpu", "--pruner", "none"]
    # two trials in flight in each (the one-at-a-time workers: tests/test_reliability.py)
    done = run_cli("--trials", "4", "--workers", "2", "--parallel-trials", "2", "--storage", url, *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr  # an ExperimentalWarning per new trial, from each worker
    states = [t.state for t in load(url).trials]
    assert 4 <= sum(s in FINISHED for s in states) <= 4 + 2 * 2 - 1
    assert TrialState.RUNNING not in states
    # two worker processes ran, and every trial was run by one of them (which one took how many
    # depends on when each started: a late one may find the budget spent)
    workers = re.findall(r"^w(\d+) started: process (\d+)", done.stdout, re.M)
    assert sorted(w for w, _ in workers) == ["0", "1"], done.stdout
    pids = {pid for _, pid in workers}
    assert {t.user_attrs["worker"].rpartition(":")[2] for t in load(url).trials} <= pids


@pytest.mark.slow
def test_workers_one_trial_at_a_time_finish_the_budget_not_more(tmp_path: Path) -> None:
    """Optuna's MaxTrialsCallback counts finished trials only: the worker whose trial ended first
    started one more while the other's was still running, so `--trials 2 --workers 2` finished 3
    (up to W - 1 over the budget). The trials running elsewhere now count, as in the fused loop."""
    url = f"sqlite:///{tmp_path / 'b.db'}"
    # trials of about a second, longer than the workers' starts are apart
    done = run_cli("--trials", "2", "--workers", "2", "--epochs", "6", "--train-samples", "2000", "--device", "cpu",
                   "--pruner", "none", "--storage", url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    trials = load(url).trials  # the new study queues as many starts as its budget holds: no WAITING left
    assert len(trials) == 2 and all(t.state in FINISHED for t in trials), [(t.number, t.state) for t in trials]


def test_sqlite_on_a_network_file_system_is_refused(tmp_path: Path, monkeypatch) -> None:
    import storage.storage as storage_module
    from storage import StorageError, open_storage
    from storage.storage import NETWORK_FILESYSTEMS, filesystem_type

    table = f"/dev/vda / ext4 rw 0 0\nserver:/export {tmp_path} nfs rw 0 0\n"
    monkeypatch.setattr(storage_module, "filesystem_type", lambda path: filesystem_type(path, table))
    with pytest.raises(StorageError, match="network file system \\(nfs\\).*PostgreSQL"):
        open_storage(f"sqlite:///{tmp_path / 'studies' / 'x.db'}")
    assert not (tmp_path / "studies").exists()  # refused before anything was created
    monkeypatch.undo()

    mounts = "/dev/vda / ext4 rw 0 0\nserver:/export /mnt/shared nfs4 rw 0 0\n"
    assert filesystem_type(Path("/mnt/shared/studies"), mounts) == "nfs4"
    assert filesystem_type(Path("/mnt/sharedother"), mounts) == "ext4"
    assert filesystem_type(Path("/tmp"), mounts) == "ext4"
    assert "nfs4" in NETWORK_FILESYSTEMS
    assert filesystem_type(Path("/tmp")) not in NETWORK_FILESYSTEMS  # this machine's real table


def _most_at_once(trials) -> int:
    """The largest number of trials that were running at the same moment."""
    edges = sorted([(t.datetime_start, 1) for t in trials] + [(t.datetime_complete, -1) for t in trials],
                   key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


@pytest.mark.slow
def test_parallel_trials_run_fused_with_the_values_of_the_one_trial_engine(tmp_path: Path) -> None:
    args = ["--epochs", "2", "--train-samples", "2000", "--device", "cpu", "--pruner", "none"]
    fused_url, one_url = f"sqlite:///{tmp_path / 'fused.db'}", f"sqlite:///{tmp_path / 'one.db'}"
    fused = run_here("--trials", "6", *args, "--parallel-trials", "3", "--storage", fused_url, cwd=tmp_path)
    assert fused.returncode == 0, fused.stderr
    assert "3 trial(s) at once per worker" in fused.stdout and "[6/6] trial" in fused.stdout
    trials = load(fused_url).trials
    assert len(trials) == 6 and all(t.state in FINISHED for t in trials)  # the budget exactly, nothing RUNNING
    # the slots were kept full, and never overfilled: a trial is asked (RUNNING) while the epoch
    # before its row frees trains, so up to K more are RUNNING in the storage than train
    assert 3 <= _most_at_once(trials) <= 2 * 3
    assert len({t.user_attrs["worker"] for t in trials}) == 1  # one process ran them all
    for t in trials:
        assert t.user_attrs["shuffle_seed"] == 0 and t.user_attrs["seed"] == t.number
        assert t.user_attrs["parallel_trials"] == 3
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs_run"] + 1))

    one = run_here("--trials", "3", *args, "--storage", one_url, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    # TPE's first trials are random draws from the same seeded sampler: the same configs in both
    # studies, trained fused or alone, with the same seeds and batch order, give the same losses
    # (up to float32 rounding of batched against single matrix products)
    for a, b in zip(trials[:3], load(one_url).trials[:3]):
        assert a.params == b.params
        assert list(a.intermediate_values.values()) == pytest.approx(list(b.intermediate_values.values()), rel=1e-4)

    more = run_here("--trials", "8", *args, "--parallel-trials", "3", "--storage", fused_url, cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    states = [t.state for t in load(fused_url).trials]
    assert len(states) == 8 and all(s in FINISHED for s in states)  # resumed to the new budget


def test_parallel_trials_auto_is_one_on_the_cpu(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'auto.db'}"
    assert main(["--trials", "1", "--parallel-trials", "auto", "--storage", url, *SMALL]) == 0
    assert "1 trial(s) at once per worker" in capsys.readouterr().out
    assert load(url).user_attrs["command"].endswith("--parallel-trials auto --storage " + url + " " + " ".join(SMALL))


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_no_trial_starts_after_the_timeout(parallel: str, tmp_path: Path, capsys) -> None:
    # What --timeout means, whatever the machine's speed: no trial is started once it has passed
    # (counted from before the first trial), and the trials started before it run to their end.
    url = f"sqlite:///{tmp_path / 'timeout.db'}"
    timeout = 1.0
    assert main(["--trials", "200", "--parallel-trials", parallel, "--timeout", str(timeout), "--storage", url,
                 *SMALL]) == 0
    trials = load(url).trials
    # the queued start (the baseline, its neighbours, one trial per strategy) not reached is left
    # queued, for a resume to take first
    assert all("start" in t.user_attrs for t in trials if t.state == TrialState.WAITING)
    trials = [t for t in trials if t.state != TrialState.WAITING]
    assert trials and all(t.state in FINISHED for t in trials)
    first = min(t.datetime_start for t in trials)
    # 0.5 s for the gap between the deadline check and the trial's creation on a busy machine;
    # without the timeout the trials would start over the 200 trials' whole run
    late = [t.number for t in trials if (t.datetime_start - first).total_seconds() > timeout + 0.5]
    assert not late, late
    assert len(trials) < 200 and f"{len(trials)} finished of 200" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["study.run", "study.report", "study.lr_range"])
def test_help_states_each_default_once_and_the_exit_codes(module: str, tmp_path: Path) -> None:
    done = run_here("--help", cwd=tmp_path, module=module)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: $STUDY_DATA_DIR, else ./data)" in text and text.count("(default: $STUDY_DATA_DIR") == 1
    assert "exit codes: 0 done" in text and "2 bad input" in text
    assert "--threads" in text
    if module == "study.run":
        assert "130 interrupted" in text and "[samplers]" in text and "cmaes" in text
        assert "--timeout" in text and "(default: no limit)" in text
    if module != "study.lr_range":  # the report reads where study.run writes, unless told otherwise
        assert "--storage STORAGE" in text and "(default: sqlite:///studies/lr-study.db)" in text


def test_report_defaults_to_the_storage_of_study_run(tmp_path: Path) -> None:
    # the two README commands without flags: study.run writes studies/lr-study.db, study.report reads it
    done = run_here("--trials", "2", *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = run_here("--final-seeds", "0", cwd=tmp_path, module="study.report")
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "reports" / "mnist-mlp-lr" / "index.html").is_file()


@pytest.mark.slow
def test_epoch_valued_ranges_are_cut_to_the_run_and_fingerprinted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cut.db'}"
    args = ["--storage", url, "--sampler", "random", "--pruner", "none", "--epochs", "3", "--train-samples", "1000",
            "--device", "cpu"]
    assert main(["--trials", "12", *args]) == 0
    study = load(url)
    space = study.user_attrs["fingerprint"]["search_space"]
    assert space["step_size"] == [1, 2] and space["plateau_patience"] == [1, 1]  # 3 epochs: a drop must act
    step_sizes = [t.params["step_size"] for t in study.trials if "step_size" in t.params]
    assert step_sizes and max(step_sizes) <= 2
    assert all(t.distributions["step_size"].high == 2 for t in study.trials if "step_size" in t.params)


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to share")
def test_worker_processes_never_ask_for_more_threads_than_cores(tmp_path: Path) -> None:
    two = sorted(os.sched_getaffinity(0))[:2]
    args = ["--epochs", "1", "--train-samples", "2000", "--device", "cpu", "--pruner", "none"]
    cases = [  # (cores, workers, --threads, threads expected in each worker)
        (two, ["--workers", "2"], 1),
        (two[:1], ["--workers", "1"], 1),
        (two, ["--workers", "1"], 2),
        (two, ["--workers", "1", "--threads", "1"], 1),
    ]
    for i, (cores, flags, each) in enumerate(cases):
        url = f"sqlite:///{tmp_path / f'threads{i}.db'}"
        # on these cores only (as taskset), a machine of that many cores
        done = run_cli("--trials", "2", "--storage", url, *args, *flags, cwd=tmp_path, timeout=300, cpus=cores)
        assert done.returncode == 0, done.stderr
        workers = int(flags[1])
        if workers > 1:  # each worker process says what torch.get_num_threads() gives it
            threads = [int(n) for n in re.findall(r"^w\d+ started: process \d+, (\d+) thread", done.stdout, re.M)]
            assert len(threads) == workers, done.stdout
        else:  # the one process that trains records it in each trial
            threads = sorted({t.user_attrs["threads"] for t in load(url).trials})
        assert set(threads) == {each}, (flags, threads)
        assert sum(threads) <= len(cores)
        assert f"{workers} worker(s) of {each} thread(s)" in done.stdout
        assert all(t.user_attrs["threads"] == each for t in load(url).trials)


# in each process: the garbage collections from the start of torch's import to the freeze of the
# imports (torch, torchvision, Optuna, SQLAlchemy), what was imported by then, and at its exit
# whether the collector runs and how many objects are frozen
_GC_PROBE = """
import atexit, gc, json, os, sys
before, at_freeze = [0], []
def collecting(phase, info):
    if phase == "start" and "torch" in sys.modules and not at_freeze:
        before[0] += 1
gc.callbacks.append(collecting)
freeze = gc.freeze
def counted():
    if not at_freeze:
        at_freeze.append({"collections": before[0], "imported": sorted(m for m in ("torch", "optuna") if m in sys.modules)})
    freeze()
gc.freeze = counted
@atexit.register
def said():
    with open(os.path.join(os.environ["GC_PROBE"], f"{os.getpid()}.json"), "w") as f:
        json.dump({"argv": sys.argv, "at_freeze": at_freeze, "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}, f)
"""


@pytest.mark.slow
def test_a_command_and_its_workers_import_without_garbage_collections_then_freeze_the_imports(tmp_path: Path) -> None:
    """study.interrupt.pause_collection: importing torch, torchvision, Optuna and SQLAlchemy ran
    hundreds of cyclic collections, a quarter of a process's start-up (the command's and each
    worker's); freeze_imports takes the imports out of the collector's reach and resumes it."""
    said = tmp_path / "said"
    said.mkdir()
    env = {**with_sitecustomize(tmp_path / "probe", _GC_PROBE, ENV), "GC_PROBE": str(said)}
    # a new interpreter, as a user's (the zygote's children never import the package anew)
    done = run_cli("--trials", "2", "--workers", "2", "--epochs", "1", "--train-samples", "500", "--device", "cpu",
                   "--pruner", "none", "--storage", f"sqlite:///{tmp_path / 'g.db'}", cwd=tmp_path, env=env, fresh=True)
    assert done.returncode == 0, done.stderr
    # the command and its two workers (a worker takes its parent's argv), not the resource tracker
    processes = [p for p in (json.loads(path.read_text()) for path in said.iterdir()) if p["argv"] != ["-c"]]
    assert len(processes) == 3 and all(p["argv"][1:3] == ["--trials", "2"] for p in processes), processes
    for p in processes:
        assert p["at_freeze"] == [{"collections": 0, "imported": ["optuna", "torch"]}], p
        assert p["enabled"] and p["frozen"] > 100_000, p


def test_a_study_made_before_the_new_lr_strategies_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    # its trials were sampled from five decays and no warm-up: new trials would not be comparable
    url = f"sqlite:///{tmp_path / 'old.db'}"
    assert main(["--trials", "1", "--storage", url, *SMALL]) == 0
    study = load(url)
    fingerprint = study.user_attrs["fingerprint"]
    space = {k: v for k, v in fingerprint["search_space"].items()
             if not k.startswith(("onecycle_", "restart_", "warmup_"))}
    space["decays"] = ["constant", "step", "exponential", "cosine", "plateau"]
    study.set_user_attr("fingerprint", {**fingerprint, "search_space": space})
    before = snapshot(url)
    capsys.readouterr()
    assert main(["--trials", "2", "--storage", url, *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another experiment" in err and "search_space.decays" in err
    assert snapshot(url) == before


def test_workers_are_spread_over_the_gpus_unless_the_device_is_pinned(monkeypatch) -> None:
    from study.experiment import Settings
    from study.run import build_parser
    from study.workers import worker_device

    def settings(*argv: str) -> Settings:
        return Settings(**vars(build_parser().parse_args(list(argv))))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device in ("auto", "cuda"):
        assert [worker_device(settings("--device", device), w) for w in range(4)] == ["cuda:0", "cuda:1"] * 2
    assert worker_device(settings("--device", "cuda:1"), 0) == "cuda:1"  # pinned: every worker there
    assert worker_device(settings("--device", "cpu"), 1) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert worker_device(settings("--device", "auto"), 1) == "auto"  # one GPU: nothing to spread
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_device(settings(), 1) == "auto"


def test_the_device_is_recorded_by_name(monkeypatch) -> None:
    from study.experiment import device_name

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert device_name(torch.device("cuda:1")) == "cuda:1 (NVIDIA H100 80GB HBM3)"
    assert re.fullmatch(r"cpu \(.+, \d+ usable cores\)", device_name(torch.device("cpu")))


def test_the_metric_is_part_of_the_experiment(tmp_path: Path, capsys) -> None:
    """--metric names the value, is recorded and fingerprinted: a resume with another metric is
    refused (the values would not be comparable), and a study made before --metric, whose value was
    the lowest validation loss, resumes as min_val_loss."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["--trials", "2", *SMALL, "--metric", "last_val_error", "--storage", url]) == 0
    assert "value last_val_error" in capsys.readouterr().out
    study = load(url)
    assert study.metric_names == ["last_val_error"] and study.user_attrs["metric"] == "last_val_error"
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.value == 1 - t.user_attrs["last_val_accuracy"]
    before = snapshot(url)
    assert main(["--trials", "3", *SMALL, "--metric", "min_val_loss", "--storage", url]) == 2
    assert "metric: stored 'last_val_error', now 'min_val_loss'" in capsys.readouterr().err
    assert snapshot(url) == before

    old = f"sqlite:///{tmp_path / 'old.db'}"
    assert main(["--trials", "1", *SMALL, "--metric", "min_val_loss", "--storage", old]) == 0
    study = load(old)
    study.set_user_attr("fingerprint", {k: v for k, v in study.user_attrs["fingerprint"].items() if k != "metric"})
    assert main(["--trials", "2", *SMALL, "--storage", old]) == 2  # the default, last_val_error, is another experiment
    assert main(["--trials", "2", *SMALL, "--metric", "min_val_loss", "--storage", old]) == 0
    assert len(load(old).get_trials(states=FINISHED)) == 2


def test_help_and_bad_flags_answer_before_torch_is_imported() -> None:
    """`--help` took 11 s on a shared machine: torch, Optuna and plotly were imported before the
    arguments were parsed. The parsers need only study.constants, whose copies of the
    libraries' values must equal them."""
    import objectives
    import objectives.data
    import objectives.lr_range
    import objectives.memory
    import objectives.precision
    import storage
    import study.choices
    import study.constants as c
    import study.experiment

    assert (c.TRAIN_SIZE, c.AUTO_SLOTS_MAX, c.PRECISIONS, c.METRICS, c.DEFAULT_METRIC, c.OPTIMIZERS, c.MIN_LR,
            c.DEFAULT_STORAGE, c.DEFAULT_STUDY_NAME, c.SAMPLERS, c.PRUNERS) == (
        objectives.data.TRAIN_SIZE, objectives.memory.AUTO_SLOTS_MAX, objectives.precision.PRECISIONS,
        objectives.METRICS, objectives.DEFAULT_METRIC, objectives.OPTIMIZERS, objectives.lr_range.MIN_LR,
        storage.DEFAULT_STORAGE, study.experiment.DEFAULT_STUDY_NAME, study.choices.SAMPLERS, study.choices.PRUNERS)
    for module in ("study.run", "study.report", "study.lr_range"):
        for args in (["--help"], ["--epochs", "0"]):
            code = (f"import runpy, sys; sys.argv = ['{module}', *{args!r}]\n"
                    f"try:\n    runpy.run_module('{module}', run_name='__main__')\n"
                    "except SystemExit as e:\n    print(e.code, sorted(m for m in ('torch', 'optuna', 'plotly') if m in sys.modules))")
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
            assert done.stdout.strip().splitlines()[-1] == f"{0 if args == ['--help'] else 2} []", (module, args, done)
