"""Every Python block of the README runs as written: each in a fresh interpreter, on its own,
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


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


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
    assert done.returncode == 0, f"README block {index + 1} failed:\n{code}\n{done.stderr}"
    assert done.stdout.strip()  # every block shows its result


def test_the_layout_names_every_module_once() -> None:
    # the README's "Layout" section is the map a new maintainer reads: one line per module
    text = (ROOT / "README.md").read_text()
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
