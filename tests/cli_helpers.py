"""Helpers for tests that drive `python -m study.run` as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--epochs", "2", "--train-samples", "2000", "--device", "cpu"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "study.run", *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=timeout)


def start_cli(*args: str, cwd: Path, new_session: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "study.run", *args], cwd=cwd, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=new_session)


def load(url: str, name: str = "mnist-mlp-lr") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def snapshot(url: str, name: str = "mnist-mlp-lr") -> list[tuple]:
    study = load(url, name)
    return [(t.number, t.state, t.value, t.params, t.intermediate_values) for t in study.trials]


def wait_for_running(url: str, proc: subprocess.Popen[str], timeout: float = 120) -> optuna.trial.FrozenTrial:
    """The first trial seen RUNNING and training (its config sampled); fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = [t for t in load(url).get_trials(states=(TrialState.RUNNING,)) if "lr" in t.user_attrs]
        except KeyError:  # the study is not created yet
            running = []
        if running:
            return running[0]
        if proc.poll() is not None:
            raise AssertionError(f"study.run ended before a trial ran: {proc.communicate()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("no trial started in time")
