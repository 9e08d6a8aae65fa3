"""A study's trials as a CSV table, for spreadsheets and other tools; `study.report` writes it.

One row per trial, under the names Optuna's ``study.trials_dataframe()`` gives its columns:
``number``, ``value_<metric>`` (the study's metric name, as the dataframe names the value of a
study with metric names; ``value`` for a study made before them), ``datetime_start``,
``datetime_complete``, ``duration``, ``params_<name>``, ``user_attrs_<key>`` and ``state``.
How it differs, exactly: ``duration`` is in seconds here (a timedelta there); the structured
user attrs (dicts, lists) are left out; ``epochs_run`` is added (the epochs a trial trained).
Written with the csv module, not through ``trials_dataframe()``, so pandas stays optional.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import optuna

from study.files import write_atomically
from study.progress import epochs_run

__all__ = ["write_trials_csv"]


def write_trials_csv(study: optuna.Study, path: Path) -> int:
    """Write ``study``'s trials to ``path`` (one row each, in trial order); returns the row count."""
    trials = study.get_trials(deepcopy=False)
    params = sorted({name for t in trials for name in t.params})
    attrs = sorted({key for t in trials for key, value in t.user_attrs.items()
                    if isinstance(value, (str, int, float, bool)) or value is None})
    value = f"value_{study.metric_names[0]}" if study.metric_names else "value"  # as trials_dataframe() names it
    header = ["number", "state", value, "datetime_start", "datetime_complete", "duration", "epochs_run",
              *(f"params_{p}" for p in params), *(f"user_attrs_{a}" for a in attrs)]
    f = io.StringIO(newline="")  # the rows, built in memory and written whole (study.files)
    out = csv.writer(f)
    out.writerow(header)
    for t in trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
        out.writerow([
            t.number, t.state.name, "" if t.value is None else t.value,
            t.datetime_start.isoformat() if t.datetime_start else "",
            t.datetime_complete.isoformat() if t.datetime_complete else "",
            duration, epochs_run(t),
            *(t.params.get(p, "") for p in params),
            *("" if t.user_attrs.get(a) is None else t.user_attrs[a] for a in attrs),
        ])
    write_atomically(path, f.getvalue())
    return len(trials)
