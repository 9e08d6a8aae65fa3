"""A study's trials as a CSV table, for spreadsheets and other tools; `study.report` writes it.

One row per trial, with the columns Optuna's ``study.trials_dataframe()`` names the same way
(``number``, ``state``, ``value``, ``datetime_start``, ``datetime_complete``, ``duration``,
``params_<name>``, ``user_attrs_<key>``; ``duration`` in seconds here, a timedelta there), plus
``epochs_run``.
Written with the csv module, not through ``trials_dataframe()``, so pandas stays optional.
Every scalar user attr is a column; the structured ones (dicts, lists) are left out.
"""

from __future__ import annotations

import csv
from pathlib import Path

import optuna

from study.progress import epochs_run

__all__ = ["write_trials_csv"]


def write_trials_csv(study: optuna.Study, path: Path) -> int:
    """Write ``study``'s trials to ``path`` (one row each, in trial order); returns the row count."""
    trials = study.get_trials(deepcopy=False)
    params = sorted({name for t in trials for name in t.params})
    attrs = sorted({key for t in trials for key, value in t.user_attrs.items()
                    if isinstance(value, (str, int, float, bool)) or value is None})
    header = ["number", "state", "value", "datetime_start", "datetime_complete", "duration", "epochs_run",
              *(f"params_{p}" for p in params), *(f"user_attrs_{a}" for a in attrs)]
    with open(path, "w", newline="", encoding="utf-8") as f:
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
    return len(trials)
