"""What a user watching `study.run` sees: a progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from cli_helpers import ENV, SMALL, run_main

# the bar's time field: elapsed<remaining (remaining may still be "?" before the first trial ends)
BAR = re.compile(r"(\d+)/(\d+) trials \|.*?\| \[(\d+:\d\d)<(\d+:\d\d|\?), best (\d\.\d{4}|-)"
                 r"(?:, trial (\d+) epoch (\d+)/(\d+)|, (\d+) trials at epochs ([\d-]+)/(\d+))?\]")


def run_on_a_terminal(args: list[str], cwd: Path, timeout: float = 240) -> str:
    """Run study.run with a pseudo-terminal as its stdout and stderr; everything it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 40 rows, 160 columns
    proc = subprocess.Popen([sys.executable, "-m", "study.run", *args], stdout=slave, stderr=slave, cwd=cwd,
                            env=ENV)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=timeout) == 0
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["1", "3"])
def test_a_terminal_gets_a_bar_with_time_remaining_and_the_best_value(tmp_path: Path, parallel: str) -> None:
    out = run_on_a_terminal(["--trials", "5", *SMALL, "--storage", f"sqlite:///{tmp_path / 's.db'}",
                             "--parallel-trials", parallel], tmp_path)
    bars = [bar[:5] for bar in BAR.findall(out)]
    assert bars, out
    # the bar moves on as trials finish, to the target, and shows a remaining time and a best value
    assert [int(n) for n, *_ in bars][-1] == 5 and all(total == "5" for _, total, *_ in bars)
    assert any(rem != "?" for *_, rem, _ in bars) and any(best != "-" for *_, best in bars)
    # the per-trial lines are still printed, each on its own line above the bar
    lines = [line for line in re.split(r"[\r\n]+", out) if re.search(r"\] trial +\d+ (COMPLETE|PRUNED)", line)]
    assert len(lines) == 5 and all(line.lstrip().startswith("[") for line in lines)
    assert "inspect: optuna-dashboard" in out


def test_a_pipe_gets_plain_lines_and_no_bar(tmp_path: Path, capsys) -> None:
    # in this process, whose stdout pytest captures: not a terminal, as a pipe or a log file
    code, out, err = run_main(["--trials", "2", *SMALL, "--storage", f"sqlite:///{tmp_path / 's.db'}"], capsys)
    assert code == 0
    assert not BAR.search(out + err) and "\r" not in out
    assert len(re.findall(r"\] trial +\d+ ", out)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["1", "2"])
def test_the_bar_moves_while_a_trial_trains_and_shows_the_studys_best_from_the_start(tmp_path: Path,
                                                                                      parallel: str) -> None:
    """For the first minutes the bar showed 0/N, its clock frozen at 00:00 and no time remaining,
    until the first trial ended; a resumed study showed `best -` although it had a best."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    args = ["--epochs", "6", "--train-samples", "6000", "--device", "cpu", "--pruner", "none", "--storage", url,
            "--parallel-trials", parallel]
    run_on_a_terminal(["--trials", "1", *args], tmp_path)
    out = run_on_a_terminal(["--trials", "2" if parallel == "1" else "3", *args], tmp_path)
    bars = BAR.findall(out)
    assert bars and bars[0][4] != "-", bars[:3]  # the study's best, from the first draw
    before_an_end = [b for b in bars if b[0] == "1"]  # while the resumed run's first trial trains
    clocks = {b[2] for b in before_an_end}
    assert len(clocks) >= 2, before_an_end  # the clock moved
    if parallel == "1":
        epochs = [int(b[6]) for b in before_an_end if b[5]]
        assert epochs and epochs == sorted(epochs) and max(epochs) >= 5 and all(b[7] == "6" for b in before_an_end if b[5])
    else:
        assert any(b[8] == "2" for b in before_an_end), before_an_end  # 2 trials at epochs e/6
    assert any(b[3] != "?" for b in before_an_end)  # a time remaining before any trial of this run ended
