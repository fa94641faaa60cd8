"""Process helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie may linger where PID 1 does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
