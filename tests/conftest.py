"""Shared test set-up: isolated config/data dirs and no provider credentials from the host."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CATALOG_DIR = ROOT / "tests" / "fixtures" / "catalog"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Every test gets its own HOME/XDG dirs and none of the host's credentials."""
    for var in (
        "VAST_API_KEY",
        "RUNPOD_API_KEY",
        "HF_TOKEN",
        "DEPLOYCTL_CATALOG",
        "DEPLOYCTL_PROVIDERS",
        "VAST_URL",
        "RUNPOD_API_BASE_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "home").mkdir()
    yield


@pytest.fixture
def catalog_dir() -> Path:
    return CATALOG_DIR
