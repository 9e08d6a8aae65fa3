"""What the benchmarks share: waiting for the device, naming it in their first line, loading the
data, and running a study in the benchmark's process."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import optuna

    from objectives import MnistData


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_label(device: torch.device) -> str:
    """The device as the first line of a benchmark names it, with the machine's load when it
    started, e.g. ``cpu = CPU (2 threads); load average 0.64 on 2 cores``; a run that began on a
    busy machine is flagged, since its figures measure the other program too."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return f"{device} = {name}; {load_line()}"


def load_line() -> str:
    """``load average L on C cores`` (1 minute, which lags), and the cores other programs kept busy
    as the benchmark started (``study.cli.busy_cores``, 0.1 s of /proc/stat), with ``CONTENDED``
    from half a core on."""
    from study.cli import busy_cores

    busy = busy_cores()
    try:
        load = f"load average {os.getloadavg()[0]:.2f}"
    except OSError:
        load = "load average unknown"
    flag = " (CONTENDED: another program was running; rerun on an idle machine)" if busy >= 0.5 else ""
    return f"{load} on {os.cpu_count() or 1} cores, {busy:.1f} busy at the start{flag}"


def device_and_data(args) -> tuple[torch.device, MnistData] | None:
    """The device of ``--device`` and MNIST on it (``--data-dir``, ``--train-samples``; cached
    for every study this process runs), or None after the one-line error."""
    import sys

    from objectives import MnistDataError, load_mnist, resolve_device

    try:
        device = resolve_device(args.device)
        return device, load_mnist(args.data_dir, device=device, train_samples=args.train_samples)
    except (ValueError, MnistDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def run_study(flags: list[str], args, device: torch.device, url: str) -> tuple[float, optuna.Study] | None:
    """``python -m study.run FLAGS`` in this process on ``url``, with the benchmark's device,
    data folder, threads and training images, its output silenced: its wall time and the study,
    or None after a line that says it failed."""
    import contextlib
    import io
    import sys
    import time

    import optuna

    from study import run
    from study.experiment import DEFAULT_STUDY_NAME

    command = [*flags, "--device", str(device), "--storage", url]
    for flag, value in (("--data-dir", args.data_dir), ("--threads", args.threads),
                        ("--train-samples", args.train_samples)):
        if value:
            command += [flag, str(value)]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = run.main(command)
    wall = time.perf_counter() - t0
    if code != 0:
        print(f"error: study.run {' '.join(command)} exited with {code}", file=sys.stderr)
        return None
    return wall, optuna.load_study(study_name=DEFAULT_STUDY_NAME, storage=url)
