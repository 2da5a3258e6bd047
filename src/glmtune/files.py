"""File-system rules shared by everything that writes a result.

safetensors' ``save_file`` creates its files with mode 0600, while everything
else glmtune writes follows the umask (usually 0644). A model folder shared with
a service account or a team must be readable like its config files, so every
result folder is normalised to the umask once it is complete.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: str | Path) -> None:
    """Give ``path`` (a file, or every file under a folder) the permissions the umask gives a new file."""
    path = Path(path)
    mode = 0o666 & ~current_umask()
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    for file in files:
        if (file.stat().st_mode & 0o777) != mode:
            os.chmod(file, mode)
