"""Settings: the user's config file (XDG), overridden by env, overridden by flags.

    $XDG_CONFIG_HOME/deployctl/config.yaml    (default ~/.config/deployctl/config.yaml)

    catalog_dir: null            providers: [vast, runpod, skypilot]    offer_deadline_s: 10
    budget:  {monthly: 20, currency: EUR, usd_per_eur: 1.08, alert_ratio: 0.8}
    limits:  {max_deployments: 1, max_price_per_hour: 1.5, max_ttl: 12h}
    alerts:  {webhook_url: https://hooks.slack.com/services/..., timeout_s: 2}

Every key has an env variable, `DEPLOYCTL_` + the dotted key in upper case with `_` for
`.` (`DEPLOYCTL_BUDGET_MONTHLY`; `catalog_dir` keeps its old `DEPLOYCTL_CATALOG`), and the
global flag `deployctl --set KEY=VALUE` overrides both for one command. Money in the
config is in `budget.currency`; deployctl converts with `budget.usd_per_eur` (offers are
priced in USD). Credentials are not settings: see `credentials.py`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .errors import BadInputError
from .units import format_duration, parse_duration_s

__all__ = [
    "KEYS",
    "Config",
    "Settings",
    "config_dir",
    "config_path",
    "load_config",
    "load_settings",
    "set_flag_overrides",
    "set_value",
]

DEFAULT_PROVIDERS = ("vast", "runpod", "skypilot")
DEFAULT_MAX_TTL_S = 12 * 3600
_NONE_WORDS = ("none", "null", "~", "")

# dotted key -> what it accepts, in words (the error sentence and `config show` use it)
KEYS: dict[str, str] = {
    "catalog_dir": "a directory of SkyPilot-format catalog CSVs, or none",
    "providers": "provider names, comma-separated (vast, runpod, skypilot, local)",
    "offer_deadline_s": "a number of seconds > 0",
    "budget.monthly": "an amount >= 0 in budget.currency (e.g. 20), or none for no budget",
    "budget.currency": "USD or EUR",
    "budget.usd_per_eur": "the USD price of 1 EUR, > 0 (e.g. 1.08)",
    "budget.alert_ratio": "a fraction > 0 and <= 1 (e.g. 0.8)",
    "limits.max_deployments": "a whole number >= 1, or none for no limit",
    "limits.max_price_per_hour": "an amount > 0 in budget.currency, or none",
    "limits.max_ttl": "a duration > 0 (e.g. 12h, 90m), or none to allow no ttl at all",
    "limits.max_workers": "a whole number >= 1: workersMax of a serverless endpoint",
    "limits.ttl_backstop": "a duration > 0 (e.g. 10m): past ttl + this, `status` and `reap` "
    "destroy a deployment its guard did not end",
    "alerts.webhook_url": "an http(s) URL taking Slack-style {\"text\": ...} posts, or none",
    "alerts.timeout_s": "a number of seconds > 0 and <= 30",
}
_ENV_NAMES = {"catalog_dir": "DEPLOYCTL_CATALOG"}
_FLAG_OVERRIDES: dict[str, str] = {}


def env_name(key: str) -> str:
    return _ENV_NAMES.get(key) or "DEPLOYCTL_" + key.upper().replace(".", "_")


def _none_word(value: Any) -> Any:
    return None if isinstance(value, str) and value.strip().lower() in _NONE_WORDS else value


def _max_ttl(value: Any) -> Any:
    value = _none_word(value)
    if value is None:
        return None
    seconds = parse_duration_s(value)
    if seconds <= 0:
        raise ValueError("must be a duration > 0, or none")
    return seconds


def _duration(value: Any) -> Any:
    seconds = parse_duration_s(value)
    if seconds <= 0:
        raise ValueError("must be a duration > 0 (e.g. 10m)")
    return seconds


def _providers(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return value


def _webhook(value: Any) -> Any:
    value = _none_word(value)
    if value is not None and not str(value).startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value


OptionalFloat = Annotated[float | None, BeforeValidator(_none_word)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Section):
    monthly: OptionalFloat = Field(default=None, ge=0)
    currency: Literal["USD", "EUR"] = "USD"
    usd_per_eur: OptionalFloat = Field(default=None, gt=0)
    alert_ratio: float = Field(default=0.8, gt=0, le=1)

    @model_validator(mode="after")
    def _rate_for_eur(self) -> Budget:
        if self.currency == "EUR" and self.usd_per_eur is None:
            raise ValueError("usd_per_eur: is required when budget.currency is EUR")
        return self

    @property
    def usd_per_unit(self) -> float:
        """USD per 1 unit of the budget's currency."""
        return self.usd_per_eur if self.currency == "EUR" and self.usd_per_eur else 1.0

    @property
    def monthly_usd(self) -> float | None:
        return None if self.monthly is None else self.monthly * self.usd_per_unit

    def show(self, usd: float) -> str:
        """An amount in USD, written in the budget's currency ("12.40 EUR")."""
        return f"{usd / self.usd_per_unit:.2f} {self.currency}"


class Limits(_Section):
    max_deployments: Annotated[int | None, BeforeValidator(_none_word)] = Field(default=1, ge=1)
    max_price_per_hour: OptionalFloat = Field(default=None, gt=0)
    # seconds; None only when the config says `max_ttl: none` explicitly
    max_ttl: Annotated[int | None, BeforeValidator(_max_ttl)] = DEFAULT_MAX_TTL_S
    max_workers: int = Field(default=1, ge=1)  # serverless workersMax
    # seconds past a deployment's ttl after which `status`/`reap` destroy it themselves
    # (its guard should have ended it at the ttl; this is the laptop-side backstop)
    ttl_backstop: Annotated[int, BeforeValidator(_duration)] = 600


class Alerts(_Section):
    webhook_url: Annotated[str | None, BeforeValidator(_webhook)] = None
    timeout_s: float = Field(default=2.0, gt=0, le=30)


class Config(_Section):
    """The effective settings (file, then env, then flags). Frozen; unknown keys are errors."""

    catalog_dir: Annotated[str | None, BeforeValidator(_none_word)] = None
    providers: Annotated[tuple[str, ...], BeforeValidator(_providers)] = DEFAULT_PROVIDERS
    offer_deadline_s: float = Field(default=10.0, gt=0)
    budget: Budget = Budget()
    limits: Limits = Limits()
    alerts: Alerts = Alerts()
    credentials: dict[str, Any] | None = Field(default=None, exclude=True, repr=False)
    # ^ checked and read by credentials.py only; never shown

    def value(self, key: str) -> Any:
        node: Any = self
        for part in key.split("."):
            node = getattr(node, part)
        return node


Settings = Config  # the name planning code has used since the first issue


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "deployctl"


def config_path() -> Path:
    return config_dir() / "config.yaml"


def set_flag_overrides(pairs: dict[str, str]) -> None:
    """`deployctl --set KEY=VALUE ...`: the values every later load sees (this process)."""
    for key in pairs:
        _known(key)
    _FLAG_OVERRIDES.clear()
    _FLAG_OVERRIDES.update(pairs)


def read_file(path: Path | None = None) -> dict[str, Any]:
    """The config file as a mapping ({} when absent); BadInputError when unreadable."""
    path = path or config_path()
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise BadInputError("config", f"{path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise BadInputError("config", f"{path} must be a mapping of settings")
    return data


def load_config(*, with_sources: bool = False) -> Any:
    """The effective Config; with `with_sources`, (Config, {key: default|file|env|flag})."""
    data = read_file()
    sources = {key: "file" for key in KEYS if _get(data, key) is not _MISSING}
    for key in KEYS:
        if os.environ.get(env_name(key), "").strip():
            _put(data, key, os.environ[env_name(key)].strip())
            sources[key] = "env"
        if key in _FLAG_OVERRIDES:
            _put(data, key, _FLAG_OVERRIDES[key])
            sources[key] = "flag"
    config = validate(data, sources)
    if with_sources:
        return config, {key: sources.get(key, "default") for key in KEYS}
    return config


def load_settings() -> Config:
    return load_config()


def validate(data: dict[str, Any], sources: dict[str, str] | None = None) -> Config:
    """A Config from a nested mapping; one BadInputError sentence naming the key."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ())]
        message = str(first.get("msg", "")).removeprefix("Value error, ")
        if not loc[1:] and ": " in message and loc and loc[0] in ("budget", "limits", "alerts"):
            field, _, message = message.partition(": ")  # a check across fields names its key
            loc = [loc[0], field]
        key = ".".join(p for p in loc[:2] if not p.isdigit()) or "config"
        where = sources.get(key, "file") if sources else "file"
        origin = {"env": f" (from {env_name(key)})", "flag": " (from --set)"}.get(where, "")
        if first.get("type") == "extra_forbidden":
            known = _known_list()
            raise BadInputError(key, f"is not a known setting{origin}; known: {known}") from None
        if key not in KEYS:
            raise BadInputError(key, f"{message}{origin}") from None
        value = _get(data, key)
        shown = "" if value is _MISSING else f"{_redacted(key, value)!r} is not accepted: "
        raise BadInputError(key, f"{shown}{message}{origin}; accepted: {KEYS[key]}") from None


def set_value(key: str, raw: str) -> tuple[Path, Any]:
    """`config set KEY VALUE`: validate the whole config with the new value, then write
    the file atomically (mode 0600). Returns (path, the validated value)."""
    _known(key)
    path = config_path()
    data = read_file(path)
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, (dict, list)):
        value = raw  # a flow mapping/list is a typo here; let validation name the key
    _put(data, key, value)
    config = validate(data, {key: "file"})
    stored = config.value(key)
    if key == "limits.max_ttl":
        _put(data, key, "none" if stored is None else format_duration(stored))
    else:
        _put(data, key, list(stored) if isinstance(stored, tuple) else stored)
    from .credentials import write_private_yaml

    write_private_yaml(path, data)
    return path, stored


def _known(key: str) -> None:
    if key not in KEYS:
        raise BadInputError("config", f"{key!r} is not a setting; known keys: {_known_list()}")


def _known_list() -> str:
    return ", ".join(KEYS)


def _redacted(key: str, value: Any) -> Any:
    return redact_url(value) if key == "alerts.webhook_url" and isinstance(value, str) else value


def redact_url(url: str | None) -> str | None:
    """A webhook URL without its secret part: scheme and host only (`https://host/***`)."""
    if not url:
        return url
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}/***"


_MISSING = object()


def _get(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value
