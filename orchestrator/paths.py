"""Where deployctl keeps things on this machine (XDG base directories)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir", "private_dir"]


def data_dir() -> Path:
    """State, keys and local instances (not created here): $DEPLOYCTL_STATE_DIR, else
    $XDG_DATA_HOME/deployctl, else ~/.local/share/deployctl."""
    if os.environ.get("DEPLOYCTL_STATE_DIR"):
        return Path(os.environ["DEPLOYCTL_STATE_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "deployctl"


def private_dir(path: Path) -> Path:
    """Create `path` with mode 0700 if missing; tighten it to 0700 if it is ours and looser."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        path.chmod(0o700)
    return path
