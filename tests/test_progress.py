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
BAR = re.compile(r"(\d+)/(\d+) trials \|.*?\| \[(\d+:\d\d)<(\d+:\d\d|\?), best (\d\.\d{4}|-)\]")


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
    bars = BAR.findall(out)
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
