"""Settings from the environment and the user's config file (XDG), flags override both.

Only what offers and planning need lives here now: where a price catalog is, which
providers to ask by default, and the per-provider deadline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import BadInputError

__all__ = ["Settings", "config_dir", "load_settings"]

DEFAULT_PROVIDERS = ("vast", "runpod", "skypilot")


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "deployctl"


@dataclass(frozen=True)
class Settings:
    catalog_dir: str | None = None
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    offer_deadline_s: float = 10.0


def load_settings() -> Settings:
    """Config file (`$XDG_CONFIG_HOME/deployctl/config.yaml`), then env (DEPLOYCTL_*)."""
    data: dict = {}
    path = config_dir() / "config.yaml"
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            raise BadInputError("config", f"{path} is not valid YAML") from None
        if not isinstance(data, dict):
            raise BadInputError("config", f"{path} must be a mapping of settings")
    catalog = os.environ.get("DEPLOYCTL_CATALOG") or data.get("catalog_dir")
    providers = os.environ.get("DEPLOYCTL_PROVIDERS") or data.get("providers")
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    deadline = os.environ.get("DEPLOYCTL_OFFER_DEADLINE_S") or data.get("offer_deadline_s", 10.0)
    try:
        deadline_s = float(deadline)
    except (TypeError, ValueError):
        raise BadInputError("offer_deadline_s", "must be a number of seconds") from None
    if deadline_s <= 0:
        raise BadInputError("offer_deadline_s", "must be a positive number of seconds")
    return Settings(
        catalog_dir=str(catalog) if catalog else None,
        providers=tuple(providers) if providers else DEFAULT_PROVIDERS,
        offer_deadline_s=deadline_s,
    )
