"""Where the suite's CPU goes, per test: a plugin for measuring, not loaded by default.

    PYTHONPATH=tests CPU_LOG=/tmp/cpu.tsv python -m pytest -p cpu_log -q

writes one line per test (node id, then seconds: wall, this process's CPU, its reaped children's,
the zygote's forked commands' with their workers, ``cli_helpers.FORKED_CPU``) and prints the
totals and the share of the cores used. docs/DEVELOPING.md ("Where the suite's time goes") reads
such a file.
"""

from __future__ import annotations

import os
import resource
import time

import pytest

_ROWS: list[tuple[str, float, float, float, float]] = []


def _now() -> tuple[float, float, float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        import cli_helpers

        forked = cli_helpers.FORKED_CPU
    except ImportError:
        forked = 0.0
    return (time.perf_counter(), own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime, forked)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    before = _now()
    yield
    after = _now()
    _ROWS.append((item.nodeid, *(b - a for a, b in zip(before, after))))


def pytest_terminal_summary(terminalreporter) -> None:
    wall, own, children, forked = (sum(row[i] for row in _ROWS) for i in range(1, 5))
    cores = len(os.sched_getaffinity(0))
    terminalreporter.write_line(
        f"cpu_log: {wall:.0f} s in tests, {own + children + forked:.0f} s of CPU ({own:.0f} this process, "
        f"{children:.0f} its children, {forked:.0f} forked commands): {(own + children + forked) / max(wall, 1e-9):.2f} "
        f"of {cores} cores")
    path = os.environ.get("CPU_LOG")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            for nodeid, *seconds in _ROWS:
                f.write("\t".join([nodeid, *(f"{s:.2f}" for s in seconds)]) + "\n")
        terminalreporter.write_line(f"cpu_log: one line per test in {path}")
