"""What the lr-study commands share: exit codes, a parser whose errors are one line and whose
help shows only meaningful defaults, argument types, and the device/data/threads options."""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import time
from pathlib import Path

from study.interrupt import EXIT_INTERRUPTED

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_STORAGE", "EXIT_USAGE", "WORKER_BYTES", "Parser",
           "add_cuda_graphs_argument", "add_device_arguments", "available_memory", "float_in", "int_at_least",
           "int_or_auto", "max_workers", "positive_float", "report_folder", "set_threads", "study_name",
           "threads_per_process", "usable_cores"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORAGE = 0, 1, 2, 3  # and EXIT_INTERRUPTED (130), from study.interrupt

EXIT_CODES = ("exit codes: 0 done, 1 a worker failed, 2 bad input (one line on stderr, nothing stored is changed), "
              "3 the storage failed during the run (one line; what was stored stays), 130 interrupted")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's ``ArgumentDefaultsHelpFormatter`` without its noise: no "(default: None)" or
    "(default: False)", and nothing added to a help text that already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.default is False or action.default == argparse.SUPPRESS or "default" in text
                or action.option_strings == [] or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, not argparse's usage block
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's cpuset),
    capped by a cgroup v2 CPU quota (``cpu.max``) where there is one. ``os.cpu_count()`` counts
    the machine's cores, which a container or taskset may not give us."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


#: What one study worker process holds in memory on the CPU with the data loaded (measured: about
#: 400 MB, up to 750 MB while fused trials train); the cap below counts this much per worker.
WORKER_BYTES = 800 * 2**20


def available_memory() -> int | None:
    """Bytes of memory available for new processes (``MemAvailable``, capped by a cgroup v2
    ``memory.max``), or None where it cannot be read."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit, used = (Path("/sys/fs/cgroup", name).read_text().strip() for name in ("memory.max", "memory.current"))
        if limit != "max":
            available = min(available, int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return max(0, available)


def max_workers() -> tuple[int, str]:
    """How many worker processes this machine holds, and why: two per usable core (each has at
    least one thread, so more only wait for a core), and no more than the available memory holds
    at :data:`WORKER_BYTES` each; at least 1."""
    cores = usable_cores()
    memory = available_memory()
    by_memory = 2 * cores if memory is None else max(1, memory // WORKER_BYTES)
    why = f"{cores} usable core(s), 2 workers per core"
    if memory is not None:
        why += f", {memory / 2**30:.1f} GiB of memory available at {WORKER_BYTES / 2**30:.1f} GiB per worker"
    return min(2 * cores, by_memory), why


def busy_cores(seconds: float = 0.1) -> float:
    """How many cores other programs keep busy now: the machine's non-idle CPU time over
    ``seconds`` (``/proc/stat``), in cores; 0 where it cannot be read. Measured once per process
    (the first call), before this process trains."""
    global _BUSY
    if _BUSY is None:
        def sample() -> tuple[int, int]:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
            return sum(fields) - idle, sum(fields)
        try:
            busy0, total0 = sample()
            time.sleep(seconds)
            busy1, total1 = sample()
            _BUSY = (busy1 - busy0) / max(1, total1 - total0) * (os.cpu_count() or 1)
        except (OSError, ValueError, IndexError):
            _BUSY = 0.0
    return _BUSY


_BUSY: float | None = None


def threads_per_process(processes: int, requested: int | None = None) -> int:
    """torch threads for each of ``processes`` training processes of one run: ``requested``
    (``--threads``), else the usable cores that other programs leave free (:func:`busy_cores`,
    rounded), shared out, at least 1 each.

    Why not torch's default: it gives every process all the cores, so two processes on two cores
    run four threads; OpenMP threads spin-wait at every barrier for a core another process holds:
    with one other busy program on 2 cores an fp32 epoch took 16.97 s with 2 threads against
    1.93 s with 1 (the first-hour probe of issue 24).
    """
    if requested is not None:
        return requested
    free = max(1, usable_cores() - round(busy_cores()))
    return max(1, free // max(1, processes))


def set_threads(processes: int, requested: int | None = None) -> int:
    """Set this process's torch threads to its share (see :func:`threads_per_process`); returns it."""
    threads = threads_per_process(processes, requested)
    import torch  # here, not at the top: the parsers of every command import this module before torch

    torch.set_num_threads(threads)
    return threads


def add_device_arguments(p: argparse.ArgumentParser, *, device_help: str = "auto|cpu|cuda|cuda:N, chosen once",
                         per: str = "this process") -> None:
    """``--device``, ``--data-dir`` and ``--threads``, the same in every command."""
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: $STUDY_DATA_DIR, else ./data)")
    p.add_argument("--threads", type=int_at_least(1, 1024), default=None,
                   help=f"CPU threads of torch in {per} (default: the usable cores, shared out between the "
                        "run's processes; lower it when other programs use the cores too)")


def add_cuda_graphs_argument(p: argparse.ArgumentParser) -> None:
    """``--no-cuda-graphs``: train eagerly on CUDA (the steps are CUDA graphs by default)."""
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="on CUDA, launch every kernel of a step from Python instead of replaying the step as a CUDA "
                        "graph: slower, for debugging and comparison (the CPU always runs eagerly)")


def int_at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, but got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, but got {text!r}")
        return value

    return parse


def int_or_auto(low: int, high: int | None = None):
    """``auto``, or an integer in ``[low, high]``."""
    parse_int = int_at_least(low, high)

    def parse(text: str) -> int | str:
        if text == "auto":
            return text
        try:
            return parse_int(text)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"expected 'auto' or an integer: {e}") from None

    return parse


def positive_float(text: str, high: float = math.inf, low: float = 0.0) -> float:
    """A finite number > 0 (and <= ``high``, and >= ``low`` where that is above 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, but got {text!r}") from None
    if not 0 < value <= high or value < low or not math.isfinite(value):
        bound = ("> 0" if high == math.inf else f"in (0, {high:.10g}]") if low <= 0 else f"in [{low:g}, {high:.10g}]"
        raise argparse.ArgumentTypeError(f"must be {bound}, but got {text!r}")
    return value


def float_in(high: float, low: float = 0.0):
    """A number in ``(0, high]`` (``[low, high]`` with ``low`` > 0)."""
    return lambda text: positive_float(text, high, low)


#: Optuna's RDB storage keeps a study name in a column of 512 characters.
STUDY_NAME_MAX = 512


def study_name(text: str) -> str:
    """A study name every supported storage keeps as given: 1 to 512 printable characters."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if len(text) > STUDY_NAME_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {STUDY_NAME_MAX} characters, but got {len(text)}")
    if not text.isprintable():
        raise argparse.ArgumentTypeError(f"must be printable characters, but got {text!r}")
    return text


#: The files ``study.report`` writes into its folder; a folder holding only these (and the marker)
#: is one a report made.
REPORT_FILES = ("index.html", "summary.md", "trials.csv")
#: The file by which ``study.report`` knows a folder it made (it holds the study's name).
REPORT_MARKER = ".lr-study-report"


def report_folder(name: str) -> Path:
    """``reports/<folder>`` for study ``name``: the name itself where it is a plain file name
    (letters, digits, ``.``, ``_``, ``-``, not starting with a dot), else those characters with
    the rest as ``_`` and 8 hex digits of the name's SHA-1, so that no name (``/etc``,
    ``../x``, ``a/b`` beside ``a_b``) leads outside ``reports/`` or onto another study's folder."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80].lstrip(".") or "study"
    if safe != name:
        safe = f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return Path("reports") / safe
