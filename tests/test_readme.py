"""Every Python block of the README and of docs/ runs as written: each in a fresh interpreter, on its own,
with only its sizes shrunk (fewer images, epochs and trials) so that the suite stays quick."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli_helpers import ROOT

# (pattern, replacement): the sizes a reader would run, made tiny; nothing else is touched
SHRINK = [
    (r'load_mnist\(device="auto"\)', 'load_mnist(device="cpu", train_samples=1000)'),
    (r'device="auto"', 'device="cpu"'),
    (r"\bepochs=\d+", "epochs=2"),
    (r"\bn_trials=\d+", "n_trials=3"),
    (r"\btrain_samples=[\d_]+", "train_samples=1000"),
]


#: The user's manual and the longer texts: every Python block of each runs as written.
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks() -> list[str]:
    return [block for path in DOCUMENTS
            for block in re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)]


def shrink(code: str) -> str:
    for pattern, replacement in SHRINK:
        code = re.sub(pattern, replacement, code)
    return code


def test_the_readme_has_its_python_blocks() -> None:
    assert len(python_blocks()) >= 3  # the objective, train, and train_many/train_stream


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # TPESampler(group=True), as the user sees
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs_as_written(index: int, tmp_path: Path, mnist_dir: Path, monkeypatch) -> None:
    # in this process, as a fresh script: its own globals, its own folder, the data where the README
    # says to put it; torch's random state put back after it (threads: tests/process_state.py)
    import contextlib
    import io

    import torch

    code = shrink(python_blocks()[index])
    monkeypatch.setenv("STUDY_DATA_DIR", str(mnist_dir))
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(out):
        try:
            exec(compile(code, f"<README block {index + 1}>", "exec"), {"__name__": "__main__"})
        except Exception as e:  # noqa: BLE001 - said with the block
            pytest.fail(f"block {index + 1} failed:\n{code}\n{type(e).__name__}: {e}")
    assert out.getvalue().strip()  # every block shows its result


def test_the_layout_names_every_module_once() -> None:
    # the "Layout" section of the design notes is the map a new maintainer reads: one line per module
    text = (ROOT / "docs" / "design.md").read_text()
    layout = text.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    listed, package = [], None
    for line in layout.splitlines():
        if line.startswith("**`"):
            package = line.split("`")[1].rstrip("/")
        elif line.startswith("- `") and package:
            listed.append(f"{package}/{line.split('`')[1]}")
    present = sorted(str(p.relative_to(ROOT)) for pkg in ("objectives", "storage", "study")
                     for p in (ROOT / pkg).glob("*.py") if p.name != "__init__.py")
    assert sorted(listed) == present


def test_the_readme_is_a_manual_that_links_the_longer_texts() -> None:
    """The README was 700 lines, mostly design essays and benchmark tables: it is the user's
    manual now, and the design, the reliability table and the measurements live in docs/."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\((docs/[^)]+\.md)\)", text)
    assert {"docs/design.md", "docs/reliability.md", "docs/measurements.md"} <= set(links)
    assert all((ROOT / link).is_file() for link in links)
    for heading in ("## Install", "## Quick start", "## Inspect it in optuna-dashboard", "## The report",
                    "## Many workers, many machines", "## Use the objectives in your own search"):
        assert heading in text, heading
    assert "STUDY_DATA_DIR" in text.split("## Quick start", 1)[1].split("\n## ", 1)[0]  # offline, as written
