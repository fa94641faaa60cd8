"""Parsing of human units: durations ("90s", "10m", "3h", "1d", "1h30m") and byte sizes."""

from __future__ import annotations

import math
import re

__all__ = ["GIB", "format_duration", "parse_duration_s"]

GIB = 1024**3
MAX_DURATION_S = 10 * 365 * 86400

_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*([smhd]))+\s*$")
_PART_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(value: str | int | float) -> int:
    """Seconds from `600`, `"600"`, `"10m"`, `"1h30m"`, `"2d"`; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 10m, 3h or 1d")
    if isinstance(value, (int, float)):  # an int past float range (10**400) is just too long
        seconds = float(value) if isinstance(value, float) or abs(value) < 10**300 else math.inf
    else:
        text = str(value).strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif _DURATION_RE.match(text):
            seconds = sum(float(n) * _UNIT_S[u] for n, u in _PART_RE.findall(text))
        else:
            raise ValueError(f"{value!r} is not a duration; use e.g. 90s, 10m, 3h or 1d")
    if not math.isfinite(seconds):  # YAML `.inf`, 400 nines: a bad value, not a crash in round()
        raise ValueError("a duration must be a finite number of seconds, e.g. 90s or 3h")
    if seconds > MAX_DURATION_S:
        raise ValueError("a duration must be at most 10 years")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return round(seconds)


def format_duration(seconds: float) -> str:
    """`5400` -> `"1h30m"`; `0` -> `"0s"`."""
    seconds = round(seconds)
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
