"""A smoke run of each benchmark at tiny sizes: it runs to the end and prints its figures.

The figures themselves are measured on the machines the README names; here only that each
benchmark still works with the code it measures (the ratios it prints are not checked: on a
busy 2-core CPU they mean nothing).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli_helpers import run_cli

pytestmark = pytest.mark.slow

TINY = ["--device", "cpu", "--train-samples", "256"]
NUMBER = r"\d+\.\d+"


def _bench(module: str, *args: str, cwd: Path) -> str:
    done = run_cli(*args, cwd=cwd, module=f"benchmarks.{module}")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    # every benchmark says how loaded the machine was, so that a contended figure is flagged
    assert re.search(r"load average [\d.]+ on \d+ cores, [\d.]+ busy at the start", done.stdout), done.stdout
    return done.stdout


def test_epoch_speed(tmp_path: Path) -> None:
    out = _bench("epoch_speed", *TINY, "--repeats", "1", cwd=tmp_path)
    assert "256 training images" in out
    assert re.search(rf"seed's way .*: +{NUMBER} s/epoch", out)
    for precision in ("fp32", "bf16"):
        assert re.search(rf"objectives.train, {precision} .*{NUMBER} s/epoch +speed-up {NUMBER}x", out), out


def test_fused_throughput(tmp_path: Path) -> None:
    out = _bench("fused_throughput", *TINY, "--ks", "1,2", "--epochs", "1", cwd=tmp_path)
    assert re.search(rf"^ +2 +{NUMBER} t-e/s", out, re.M), out
    assert re.search(r"train_many, K = 2 .*per trial", out), out


def test_fused_study(tmp_path: Path) -> None:
    out = _bench("fused_study", *TINY, "--ks", "1,2", "--trials", "2", "--epochs", "1", "--repeats", "1", cwd=tmp_path)
    rows = [line.split() for line in out.splitlines() if re.match(r" +[12] +fp32 +median +0 ", line)]
    assert [row[0] for row in rows] == ["1", "2"], out  # one study per K, each with 2 trials
    assert all(int(row[5]) + int(row[6]) == 2 for row in rows), out


def test_pruning_overhead(tmp_path: Path) -> None:
    out = _bench("pruning_overhead", "--ks", "1,2", "--finished", "6", cwd=tmp_path)
    assert re.search(rf"^ +2 \| +{NUMBER} ", out, re.M), out


def test_host_overlap(tmp_path: Path) -> None:
    out = _bench("host_overlap", *TINY, "--k", "2", "--trials", "3", "--epochs", "2", cwd=tmp_path)
    rows = [line.split() for line in out.splitlines() if re.match(r" +(between|ahead) +0 ", line)]
    assert [row[0] for row in rows] == ["between", "ahead"], out
    assert re.search(rf"waits for per boundary: {NUMBER} ms in between, {NUMBER} ms ahead", out), out
    # the new trials (asked, weights built and sent): all between epochs in between, some while an epoch trains ahead
    taken = {row[0]: tuple(map(int, row[6].split("/"))) for row in rows}
    assert taken["between"] == (0, 3) and taken["ahead"][0] >= 1 and sum(taken["ahead"]) == 3, out
