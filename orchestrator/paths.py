"""Where deployctl keeps things on this machine (XDG base directories)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir"]


def data_dir() -> Path:
    """State, keys and local instances: $DEPLOYCTL_STATE_DIR, else $XDG_DATA_HOME/deployctl,
    else ~/.local/share/deployctl. Created with mode 0700."""
    explicit = os.environ.get("DEPLOYCTL_STATE_DIR")
    if explicit:
        path = Path(explicit).expanduser()
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        path = Path(base) / "deployctl"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
