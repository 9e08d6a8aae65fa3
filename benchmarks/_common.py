"""What the benchmarks share: waiting for the device, and naming it in their first line."""

from __future__ import annotations

import os

import torch


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
