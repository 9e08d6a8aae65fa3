"""Files the commands write: each one whole or not at all, and never through a link.

A page, summary, CSV or figure is written to a temporary file in its folder and moved over its
name (``os.replace``, atomic on POSIX): a link planted at the name is replaced, not followed (the
next report overwrote whatever file the link pointed at), and a write that fails (a full disk)
leaves the previous file whole and no half-written one (the temporary file is removed).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["check_writable_folder", "write_atomically"]


def write_atomically(path: Path | str, data: str | bytes, encoding: str = "utf-8") -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    content = data.encode(encoding) if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_writable_folder(folder: Path, flag: str) -> None:
    """``folder`` exists (made if need be) and takes a new file, else a one-line ValueError naming
    ``flag``: for a command to say so before its minutes of work, not after."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {folder} cannot be written ({e.strerror or e})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
