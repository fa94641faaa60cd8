"""Settings (file < env < --set) with one-sentence errors, and credentials from env or a
private file that is refused when others can read it."""

from __future__ import annotations

import os

import pytest
import yaml

from orchestrator import config as config_mod
from orchestrator.config import config_path, load_config, set_flag_overrides, set_value
from orchestrator.credentials import credential_sources, credentials_path, set_credential
from orchestrator.errors import BadInputError
from providers.base import env_secret


@pytest.fixture(autouse=True)
def _no_flags():
    set_flag_overrides({})
    yield
    set_flag_overrides({})


def write_config(data: dict, mode: int = 0o600):
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    path.chmod(mode)
    return path


def test_defaults():
    c = load_config()
    assert c.budget.monthly is None and c.budget.currency == "USD"
    assert c.budget.alert_ratio == 0.8
    assert c.limits.max_deployments == 1 and c.limits.max_ttl == 12 * 3600
    assert c.limits.max_price_per_hour is None and c.alerts.webhook_url is None
    assert c.providers == ("vast", "runpod", "skypilot") and c.offer_deadline_s == 10


def test_file_then_env_then_flag(monkeypatch):
    write_config({"budget": {"monthly": 20}, "limits": {"max_deployments": 2}})
    c, sources = load_config(with_sources=True)
    assert c.budget.monthly == 20 and sources["budget.monthly"] == "file"
    monkeypatch.setenv("DEPLOYCTL_BUDGET_MONTHLY", "30")
    assert load_config().budget.monthly == 30
    set_flag_overrides({"budget.monthly": "40", "limits.max_ttl": "none"})
    c, sources = load_config(with_sources=True)
    assert c.budget.monthly == 40 and sources["budget.monthly"] == "flag"
    assert c.limits.max_ttl is None and c.limits.max_deployments == 2
    assert sources["alerts.webhook_url"] == "default"


def test_max_ttl_none_only_when_said_explicitly():
    write_config({"limits": {"max_deployments": 1}})
    assert load_config().limits.max_ttl == 12 * 3600  # absent: the default
    write_config({"limits": {"max_ttl": None}})
    assert load_config().limits.max_ttl is None  # `max_ttl: null` is explicit too
    write_config({"limits": {"max_ttl": "none"}})
    assert load_config().limits.max_ttl is None


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("budget.monthly", "abc", "budget.monthly: 'abc' is not accepted"),
        ("budget.monthly", "-3", "accepted: an amount >= 0 in budget.currency"),
        ("budget.currency", "GBP", "accepted: USD or EUR"),
        ("budget.currency", "EUR", "budget.usd_per_eur: is required when budget.currency is EUR"),
        ("budget.alert_ratio", "1.5", "budget.alert_ratio: 1.5 is not accepted"),
        ("limits.max_ttl", "0", "limits.max_ttl: 0 is not accepted: must be a duration > 0"),
        ("limits.max_ttl", "soon", "accepted: a duration > 0 (e.g. 12h, 90m), or none"),
        ("limits.max_deployments", "0", "accepted: a whole number >= 1, or none"),
        ("alerts.webhook_url", "ftp://x", "accepted: an http(s) URL"),
        ("budget.montly", "3", "'budget.montly' is not a setting; known keys: catalog_dir"),
    ],
)
def test_set_refuses_bad_keys_and_values_in_one_sentence(key, value, expected):
    with pytest.raises(BadInputError) as exc:
        set_value(key, value)
    assert expected in str(exc.value)
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)
    assert not config_path().exists()  # nothing written


def test_set_validates_then_writes_a_private_file():
    set_value("budget.usd_per_eur", "1.08")
    set_value("budget.currency", "EUR")
    set_value("limits.max_ttl", "90m")
    set_value("providers", "vast,runpod")
    assert oct(config_path().stat().st_mode & 0o777) == "0o600"
    data = yaml.safe_load(config_path().read_text())
    assert data["budget"] == {"usd_per_eur": 1.08, "currency": "EUR"}
    assert data["limits"]["max_ttl"] == "1h30m" and data["providers"] == ["vast", "runpod"]
    c = load_config()
    assert c.budget.monthly_usd is None and c.budget.show(10.8) == "10.00 EUR"


def test_unknown_key_in_file_or_bad_env_names_its_source(monkeypatch):
    write_config({"budget": {"montly": 5}})
    with pytest.raises(BadInputError, match=r"budget.montly: is not a known setting"):
        load_config()
    write_config({})
    monkeypatch.setenv("DEPLOYCTL_LIMITS_MAX_DEPLOYMENTS", "many")
    with pytest.raises(BadInputError, match=r"\(from DEPLOYCTL_LIMITS_MAX_DEPLOYMENTS\)"):
        load_config()


def test_credentials_from_env_first_then_the_private_file(monkeypatch):
    assert env_secret("VAST_API_KEY") is None
    set_credential("vast_api_key", "file-key-123456")
    assert oct(credentials_path().stat().st_mode & 0o777) == "0o600"
    assert env_secret("VAST_API_KEY") == "file-key-123456"
    assert credential_sources()["vast_api_key"] == "credentials file"
    monkeypatch.setenv("VAST_API_KEY", "env-key-654321")
    assert env_secret("VAST_API_KEY") == "env-key-654321"
    assert credential_sources()["vast_api_key"] == "env VAST_API_KEY"
    assert env_secret("SOMETHING_ELSE") is None


def test_providers_get_their_key_from_the_file():
    from providers.runpod import RunPodProvider
    from providers.vast import VastProvider

    assert not VastProvider().check_credentials().ok
    set_credential("vast_api_key", "file-key-123456")
    set_credential("runpod_api_key", "rp-file-key-999")
    assert VastProvider().api_key == "file-key-123456"
    assert RunPodProvider().api_key == "rp-file-key-999"
    assert VastProvider().check_credentials().ok


def test_credentials_in_the_config_file_need_it_private():
    path = write_config({"credentials": {"runpod_api_key": "rp-in-config-1"}}, mode=0o600)
    assert env_secret("RUNPOD_API_KEY") == "rp-in-config-1"
    assert credential_sources()["runpod_api_key"] == "config file"
    path.chmod(0o644)
    with pytest.raises(BadInputError, match=r"has mode 0644.*chmod 600"):
        env_secret("RUNPOD_API_KEY")
    load_config()  # the settings themselves stay readable


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_credentials_file_others_can_read_is_refused_as_ssh_does(mode):
    set_credential("vast_api_key", "file-key-123456")
    credentials_path().chmod(mode)
    with pytest.raises(BadInputError) as exc:
        env_secret("VAST_API_KEY")
    message = str(exc.value)
    assert exc.value.exit_code == 2 and f"mode {mode:04o}" in message
    assert f"chmod 600 {credentials_path()}" in message and "file-key" not in message


def test_unknown_names_in_the_credentials_file_are_refused():
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("vast_key: abc\n")
    path.chmod(0o600)
    with pytest.raises(BadInputError, match=r"'vast_key' in .* is not known; use vast_api_key"):
        env_secret("VAST_API_KEY")


def test_webhook_url_is_shown_without_its_secret_path():
    assert config_mod.redact_url("https://hooks.slack.com/services/T0/B0/XYZ") == (
        "https://hooks.slack.com/***"
    )
    assert config_mod.redact_url("http://user:pw@127.0.0.1:9/x") == "http://127.0.0.1:9/***"
    assert os.environ.get("DEPLOYCTL_ALERTS_WEBHOOK_URL") is None
