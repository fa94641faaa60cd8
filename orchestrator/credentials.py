"""Provider credentials: the environment first, then a private file; never printed.

Each secret is looked up in its environment variable (`VAST_API_KEY`, `RUNPOD_API_KEY`,
`HF_TOKEN`), then in `$XDG_CONFIG_HOME/deployctl/credentials.yaml`, then in a
`credentials:` section of config.yaml:

    # ~/.config/deployctl/credentials.yaml  (mode 0600)
    vast_api_key: ...
    runpod_api_key: ...
    hf_token: ...

A file holding credentials that its group or others can read (or that another user owns)
is refused, as ssh refuses such a private key: the command stops with exit 2 and says
`chmod 600 <file>`. `deployctl config set credentials.vast_api_key KEY` writes the file
with mode 0600. Values never appear in output: `config show` says only where each came
from.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import yaml

from .errors import BadInputError

__all__ = [
    "CREDENTIAL_ENV",
    "credential_sources",
    "credentials_path",
    "set_credential",
    "stored_secret",
    "write_private_yaml",
]

CREDENTIAL_ENV = {
    "vast_api_key": "VAST_API_KEY",
    "runpod_api_key": "RUNPOD_API_KEY",
    "hf_token": "HF_TOKEN",
}
_BY_ENV = {env: key for key, env in CREDENTIAL_ENV.items()}


def credentials_path() -> Path:
    from .config import config_dir

    return config_dir() / "credentials.yaml"


def check_private(path: Path) -> None:
    """Refuse a credentials file that group/others can read or another user owns."""
    st = path.stat()
    mode = st.st_mode & 0o777
    if mode & 0o077 or st.st_uid != os.getuid():
        why = f"has mode {mode:04o}" if mode & 0o077 else "is owned by another user"
        raise BadInputError(
            "credentials",
            f"{path} {why}, so others may read the keys in it, and deployctl refuses it as ssh "
            f"refuses such keys; run `chmod 600 {path}` (and own it) to use it",
        )


def _validated(data: Any, path: Path) -> dict[str, str]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInputError("credentials", f"{path} must map names to keys")
    out = {}
    for name, value in data.items():
        if name not in CREDENTIAL_ENV:
            known = ", ".join(CREDENTIAL_ENV)
            raise BadInputError("credentials", f"{name!r} in {path} is not known; use {known}")
        if value is not None and str(value).strip():
            out[name] = str(value).strip()
    return out


def _stored() -> dict[str, tuple[str, str]]:
    """{name: (value, "credentials file" | "config file")}, permission-checked."""
    from .config import config_path, read_file

    found: dict[str, tuple[str, str]] = {}
    cfg = config_path()
    section = read_file(cfg).get("credentials")
    if section:
        check_private(cfg)
        found.update((k, (v, "config file")) for k, v in _validated(section, cfg).items())
    path = credentials_path()
    if path.is_file():
        check_private(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            raise BadInputError("credentials", f"{path} is not valid YAML") from None
        found.update((k, (v, "credentials file")) for k, v in _validated(data, path).items())
    return found


def stored_secret(env_name: str) -> str | None:
    """The value stored in a credentials file for env variable `env_name`, or None."""
    name = _BY_ENV.get(env_name)
    if name is None:
        return None
    value = _stored().get(name)
    return value[0] if value else None


def credential_sources() -> dict[str, str]:
    """Where each credential comes from: env, credentials file, config file or missing."""
    stored = _stored()
    out = {}
    for name, env in CREDENTIAL_ENV.items():
        if os.environ.get(env, "").strip():
            out[name] = f"env {env}"
        else:
            out[name] = stored[name][1] if name in stored else "missing"
    return out


def set_credential(name: str, value: str) -> Path:
    """Store one credential in credentials.yaml (created or rewritten with mode 0600)."""
    if name not in CREDENTIAL_ENV:
        known = ", ".join(f"credentials.{k}" for k in CREDENTIAL_ENV)
        raise BadInputError(f"credentials.{name}", f"is not a credential; known: {known}")
    if not value.strip():
        raise BadInputError(f"credentials.{name}", "must not be empty")
    path = credentials_path()
    data: dict[str, Any] = {}
    if path.is_file():
        check_private(path)
        data = dict(_validated(yaml.safe_load(path.read_text(encoding="utf-8")), path))
    data[name] = value.strip()
    write_private_yaml(path, data)
    return path


def write_private_yaml(path: Path, data: dict[str, Any]) -> None:
    """Write YAML atomically with mode 0600 (the directory is made 0700)."""
    from .paths import private_dir

    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            yaml.safe_dump(data, f, sort_keys=False, default_flow_style=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
