"""What `python -m study.report` does once its arguments are parsed (:mod:`study.report` parses
them before torch and Optuna are imported): the figures, the final word, the page, the summary,
the CSV and the study's note, each check done before minutes of retraining; a storage failure or
an interruption is one line."""

from __future__ import annotations

import argparse
import html
import shlex
import sys
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from objectives import MnistDataError, load_mnist, resolve_device
from storage import (StorageError, check_writable, dashboard_command, hide_password, open_storage, sqlite_path,
                     storage_failure)
from study.files import check_writable_folder, write_atomically
from study.interrupt import ignore_from_now, interrupts_held
from study.cli import (EXIT_INTERRUPTED, EXIT_OK, EXIT_STORAGE, EXIT_USAGE, REPORT_FILES, REPORT_MARKER, report_folder,
                       set_threads)
from study.constants import CPU_CANDIDATES
from study.experiment import hide_stored_password
from study.export import write_trials_csv
from study.figures import report_figures
from study.final_word import final_word
from study.findings import decay_rows
from study.page import (decay_table_html, final_html, markdown_html, summary_markdown, unfinished, verdict_lines,
                        write_page)
from study.progress import edge_warnings, metric_name
from study.words import count

__all__ = ["report", "terminal_lines"]


def report(args: argparse.Namespace) -> int:
    """The report of ``args``; the exit code."""
    try:
        return _report(args)
    except Exception as e:  # noqa: BLE001 - the storage failing is one line; anything else is a bug
        reason = storage_failure(e)
        if reason is None:
            raise
        print(f"error: storage {hide_password(args.storage)} failed: {reason}", file=sys.stderr)
        return EXIT_STORAGE
    except KeyboardInterrupt:
        print("interrupted: the report was not finished; run the same command again (the study itself is "
              "unchanged unless the report got to its last step)", file=sys.stderr)
        return EXIT_INTERRUPTED


def terminal_lines(study: optuna.Study, final: dict | None) -> list[str]:
    """What the terminal gets: the study in one line, the answer in a few (its recipe, its test
    accuracy beside the reference's, the config line); the whole summary, the candidates and the
    PyTorch snippet are in summary.md and on the page."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    best = study.best_trial
    metric = metric_name(study)
    lines = [*(f"warning: {line}" for line in unfinished(study)),
             f"study {study.study_name!r}: {count(len(states), 'trial')} ({states.count(TrialState.COMPLETE)} complete, "
             f"{states.count(TrialState.PRUNED)} pruned, {states.count(TrialState.FAIL)} failed); best trial "
             f"{best.number}: {metric} {best.value:.4f}, validation accuracy "
             f"{100 * best.user_attrs.get('val_accuracy', float('nan')):.2f} %"]
    if final:
        lines += verdict_lines(final)
        a = final["answer"]
        if a is not None:
            lines += [f"the answer: {a['recipe']}",
                      f"  as a config: {a['config_line']}  (in plain PyTorch: summary.md)"]
    return lines


def _marker(name: str, storage: str) -> str:
    """What a report folder's marker holds: the study's name and its storage (password hidden)."""
    return f"{name}\n{hide_password(storage)}\n"


def _check_out(folder: Path, name: str, storage: str) -> str | None:
    """A one-line ValueError if ``folder`` holds files a report did not write (the report never
    overwrites those), or cannot be looked at (a name too long); a warning if it holds another
    study's report (another name, or the same name in another storage), which this one replaces."""
    try:
        return _check_out_folder(folder, name, storage)
    except OSError as e:
        raise ValueError(f"--out {folder} cannot be used ({e.strerror or e})") from None


def _check_out_folder(folder: Path, name: str, storage: str) -> str | None:
    if not folder.is_dir():
        return None
    entries = {p.name for p in folder.iterdir()}
    marker = folder / REPORT_MARKER
    if marker.is_file():
        made_for, *made_in = marker.read_text(encoding="utf-8", errors="replace").strip().split("\n")
        if made_for == name and (not made_in or made_in[0] == hide_password(storage)):  # a marker of before: the name
            return None
        where = f" in {made_in[0]}" if made_in and made_for == name else ""
        return f"--out {folder} holds the report of study {made_for!r}{where}: replaced by study {name!r}'s"
    if entries - set(REPORT_FILES):
        raise ValueError(f"--out {folder} holds files a report did not write ({', '.join(sorted(entries)[:3])}"
                         f"{', …' if len(entries) > 3 else ''}); give a new or empty folder")
    return None


def _upload_page(study: optuna.Study, page: Path, artifact_dir: Path) -> str:
    """``page`` uploaded as the study's artifact (Optuna's ``upload_artifact``): its id. If the
    upload fails (a full disk, the storage), the file it may have left is removed: no artifact
    without its record in the study."""
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    written: list[str] = []  # the ids the store wrote, to take them back

    class Store(FileSystemArtifactStore):
        def write(self, artifact_id, content_body) -> None:  # noqa: ANN001 - Optuna's signature
            written.append(artifact_id)
            super().write(artifact_id, content_body)

    store = Store(str(artifact_dir))
    try:
        return upload_artifact(artifact_store=store, file_path=str(page), study_or_trial=study, mimetype="text/html")
    except BaseException:
        for artifact_id in written:
            try:
                store.remove(artifact_id)
            except Exception:  # noqa: BLE001 - never hide the failure that brought us here
                pass
        raise


def _report(args: argparse.Namespace) -> int:
    args.out = args.out or report_folder(args.study_name)  # never outside reports/, whatever the name
    set_threads(1, args.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        storage = open_storage(args.storage, create=False, call_guard=interrupts_held)
        try:
            study = optuna.load_study(study_name=args.study_name, storage=storage)
        except KeyError:
            raise ValueError(f"no study {args.study_name!r} in {hide_password(args.storage)}") from None
        if len(study.directions) != 1:
            raise ValueError(f"study {args.study_name!r} has {len(study.directions)} objectives; study.report reports "
                             "the single-objective studies of study.run")
        if "fingerprint" not in study.user_attrs:
            raise ValueError(f"study {args.study_name!r} was not created by study.run (it has no recorded settings: "
                             "epochs, metric, search space); study.report reports study.run's studies")
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            raise ValueError(f"study {args.study_name!r} has no complete trial yet")
        device = resolve_device(args.device) if args.final_seeds else None
        # every place written to is checked before minutes of retraining, not after
        artifact_dir = args.artifact_dir
        if artifact_dir is None:
            db = sqlite_path(args.storage)
            artifact_dir = (db.parent if db is not None else Path(".")) / "artifacts"
        replaced = _check_out(args.out, study.study_name, args.storage)
        for folder, flag in ((args.out, "--out"), (artifact_dir, "--artifact-dir")):
            check_writable_folder(folder, flag)
    except (ValueError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    # the study takes the report's records at the end: a read-only study is said now (a write,
    # rolled back), not after the final word (exit 3, through report())
    check_writable(storage, study.study_name)

    rows = decay_rows(study)
    figures = report_figures(study, rows)

    final = None
    if args.final_seeds:
        try:
            data = load_mnist(args.data_dir, device=device)
            gpu = device.type == "cuda"
            final = final_word(study, rows, args.final_seeds, data, data.for_final_training(), fused=gpu,
                               limit=args.candidates or (None if gpu else CPU_CANDIDATES), baseline=args.baseline,
                               cuda_graphs=args.cuda_graphs, log=lambda line: print(line, flush=True))
        except (ValueError, MnistDataError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE

    edge = edge_warnings(study.best_trial, study.user_attrs.get("epochs"))
    md = summary_markdown(study, rows, final, edge)
    # the answer first: the final word, then the summary (its final-word table is the one above)
    sections = [("The answer", final_html(final))] if final else []
    sections.append(("Summary", markdown_html(summary_markdown(study, rows, None, edge))))
    first = True
    for heading, fig in figures:
        if isinstance(fig, str):  # left out for lack of trials: said where it would be
            sections.append((heading, f'<p class="note">{html.escape(fig)}</p>'))
            continue
        body = fig.to_html(full_html=False, include_plotlyjs=first)  # plotly.js once, inline: offline
        first = False
        if heading == "Decay-strategy comparison":
            body += decay_table_html(rows)
        sections.append((heading, body))
    if replaced:
        print(f"warning: {replaced}", file=sys.stderr)
    page = args.out / "index.html"
    # the dashboard shows the summary as the study's note and offers the page as an artifact
    from optuna_dashboard import save_note

    try:  # each file whole or as it was (study.files); a full disk is one line, not a traceback
        write_atomically(args.out / REPORT_MARKER, _marker(study.study_name, args.storage))  # this folder is a report's
        write_page(page, f"lr-study report: {study.study_name}", sections)
        write_atomically(args.out / "summary.md", md)
        write_trials_csv(study, args.out / "trials.csv")
    except OSError as e:
        where = e.filename or args.out
        print(f"error: the report could not be written to {where} ({e.strerror or e}); the study is unchanged and "
              "the final word not stored: free some space (or give --out elsewhere) and run again", file=sys.stderr)
        return EXIT_STORAGE
    # the study's own records once every file is written, then the page as its artifact
    save_note(study, md)
    hide_stored_password(study)
    if final:
        study.set_user_attr("final_test", final)
    try:
        artifact_id = _upload_page(study, page, artifact_dir)
    except OSError as e:
        print(f"error: the page could not be stored as the study's artifact in {artifact_dir} ({e.strerror or e}); "
              f"the report's files, the study's note{' and final word' if final else ''} are stored: free some space "
              "(or give --artifact-dir elsewhere) and run again for the artifact", file=sys.stderr)
        return EXIT_STORAGE
    ignore_from_now()  # everything is written and stored: a signal now would only lie "not finished"
    print("\n".join(terminal_lines(study, final)))
    for w in edge:  # once, here (summary.md has them too)
        print(f"warning: {w}", file=sys.stderr)
    print(f"files:\n  report: {page.resolve()}\n  summary: {(args.out / 'summary.md').resolve()}\n"
          f"  trials (CSV, one row per trial): {(args.out / 'trials.csv').resolve()}\n"
          f"  artifact {artifact_id} in {artifact_dir.resolve()}\n"
          f"inspect: {dashboard_command(args.storage)} --artifact-dir {shlex.quote(str(artifact_dir.resolve()))}")
    return EXIT_OK
