"""Every Python block of the README and of docs/ runs as written: each in a fresh interpreter, on its own,
with only its sizes shrunk (fewer images, epochs and trials) so that the suite stays quick."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import ENV, ROOT

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


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs_as_written(index: int, tmp_path: Path, mnist_dir: Path) -> None:
    code = shrink(python_blocks()[index])
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**ENV, "STUDY_DATA_DIR": str(mnist_dir)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"block {index + 1} failed:\n{code}\n{done.stderr}"
    assert done.stdout.strip()  # every block shows its result


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
