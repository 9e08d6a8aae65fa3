"""The report's words: the summary in markdown (the study's note in optuna-dashboard), its
tables in HTML, and the self-contained page that holds them with the figures."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import optuna
from optuna.trial import TrialState

from study.findings import DecayRow, warmup_rows

__all__ = ["decay_table_html", "final_html", "markdown_html", "summary_markdown", "write_page"]


def _pct(mean: float, sd: float, n: int) -> str:
    return f"{100 * mean:.2f} % ± {100 * sd:.2f}" if n > 1 else f"{100 * mean:.2f} % (one seed: no sd)"


def summary_markdown(study: optuna.Study, rows: list[DecayRow], final: dict | None, warnings_: list[str]) -> str:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    best = study.best_trial
    lines = [
        f"# Study `{study.study_name}`", "",
        f"{len(states)} trials: {states.count(TrialState.COMPLETE)} complete, {states.count(TrialState.PRUNED)} pruned, "
        f"{states.count(TrialState.FAIL)} failed. Command: `{study.user_attrs.get('command', '?')}`", "",
        f"**Best**: trial {best.number}, validation loss {best.value:.4f}, validation accuracy "
        f"{100 * best.user_attrs.get('val_accuracy', math.nan):.2f} % (epoch {best.user_attrs.get('best_epoch', '?')})", "",
        "| parameter | value |", "|---|---|",
        *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in best.params.items()], "",
        "## Decay strategies", "",
        "| strategy | best val loss | val accuracy | epochs | trials | pruned | best trial |", "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        b = row.best
        if b is None:
            lines.append(f"| {row.decay} | – | – | – | {row.n_trials} | {row.n_pruned} | – |")
        else:
            lines.append(f"| {row.decay} | {b.value:.4f} | {100 * b.user_attrs.get('val_accuracy', math.nan):.2f} % | "
                         f"{b.user_attrs.get('epochs_run', '?')} | {row.n_trials} | {row.n_pruned} | {b.number} |")
    lines += ["", "## Warm-up", "", "| | best val loss | trials | pruned | best trial |", "|---|---|---|---|---|"]
    for w in warmup_rows(study):
        best_cells = "– | " if w.best is None else f"{w.best.value:.4f} | "
        lines.append(f"| {w.label} | {best_cells}{w.n_trials} | {w.n_pruned} | "
                     f"{'–' if w.best is None else w.best.number} |")
    if final:
        lines += ["", "## Final word: test accuracy", "",
                  "Each retrained on all 60k training images with its schedule as searched and evaluated once on "
                  "the 10k test images after its trial's best epoch (the model the search chose).", "",
                  "| configuration | trial | best epoch | test accuracy (mean ± sd) | seeds |", "|---|---|---|---|---|"]
        for label, r in final.items():
            lines.append(f"| {label} | {r['trial']} | {r.get('best_epoch', r['epochs'])} | {_pct(r['test_accuracy_mean'], r['test_accuracy_sd'], len(r['seeds']))} | {len(r['seeds'])} |")
    if warnings_:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in warnings_]]
    return "\n".join(lines) + "\n"


def decay_table_html(rows: list[DecayRow]) -> str:
    head = "<tr><th>strategy</th><th>best val loss</th><th>val accuracy</th><th>epochs</th><th>n trials</th><th>n pruned</th><th>best trial</th></tr>"
    body = []
    for row in rows:
        b = row.best
        cells = ([row.decay, "–", "–", "–"] if b is None else
                 [row.decay, f"{b.value:.4f}", f"{100 * b.user_attrs.get('val_accuracy', math.nan):.2f} %",
                  str(b.user_attrs.get("epochs_run", "?"))])
        cells += [str(row.n_trials), str(row.n_pruned), "–" if b is None else str(b.number)]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f'<table id="decay-table">{head}{"".join(body)}</table>'


def final_html(final: dict) -> str:
    """The final word as the page's first table: it is the answer the study gives."""
    head = "<tr><th>configuration</th><th>trial</th><th>optimizer</th><th>decay</th><th>warm-up</th>" \
           "<th>val loss</th><th>best epoch</th><th>test accuracy (mean ± sd)</th><th>seeds</th></tr>"
    body = []
    for label, r in final.items():
        cells = [label, str(r["trial"]), r["optimizer"], r["decay"], f"{r.get('warmup_epochs', 0)} ep",
                 f"{r['val_loss']:.4f}", str(r.get("best_epoch", r["epochs"])),
                 _pct(r["test_accuracy_mean"], r["test_accuracy_sd"], len(r["seeds"])), str(len(r["seeds"]))]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    some = next(iter(final.values()))
    note = (f"<p>Each configuration retrained on all {some['train_images']:,} training images in "
            f"{html.escape(some['precision'])} with its schedule as searched ({some['epochs']} epochs), once per seed, and "
            "evaluated once on the 10k test images after its trial's best epoch, the model the search chose: the "
            "test set's only use.</p>")
    return f'{note}<table id="final-test">{head}{"".join(body)}</table>'


def markdown_html(md: str) -> str:
    """The summary's markdown as HTML for the page: headings, paragraphs, tables, lists, bold and
    code, the only constructs :func:`summary_markdown` writes. Written here because none of our
    dependencies renders markdown, and a raw ``<pre>`` hides the tables' structure."""
    def inline(text: str) -> str:
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text, quote=False))
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    out: list[str] = []
    blocks = re.split(r"\n\s*\n", md.strip())
    for block in blocks:
        lines = block.splitlines()
        if lines[0].startswith("#"):
            level = len(lines[0]) - len(lines[0].lstrip("#"))
            out.append(f"<h{level + 2}>{inline(lines[0].lstrip('#').strip())}</h{level + 2}>")
        elif all(line.startswith("|") for line in lines):
            rows = [[inline(c.strip()) for c in line.strip().strip("|").split("|")] for line in lines
                    if not re.fullmatch(r"[|\-: ]+", line)]
            head = "".join(f"<th>{c}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif all(line.startswith("- ") for line in lines):
            out.append("<ul>" + "".join(f"<li>{inline(line[2:])}</li>" for line in lines) + "</ul>")
        else:
            out.append(f"<p>{inline(' '.join(lines))}</p>")
    return "\n".join(out)


# After load: how many figures plotly drew, and any script error, as attributes a headless browser can read.
_RENDER_CHECK = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message)); });
window.addEventListener('load', function () { setTimeout(function () {
  document.body.setAttribute('data-figures', document.querySelectorAll('.plotly-graph-div').length);
  document.body.setAttribute('data-rendered', document.querySelectorAll('.plotly-graph-div .main-svg').length > 0 ?
    Array.from(document.querySelectorAll('.plotly-graph-div')).filter(function (d) { return d.querySelector('.main-svg'); }).length : 0);
  document.body.setAttribute('data-errors', window.__errors.join(' | '));
}, 500); });
</script>"""


def write_page(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
             "th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;white-space:pre-wrap}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{style}</style>{_RENDER_CHECK}</head><body><h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<section><h2>{html.escape(heading)}</h2>{body}</section>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
