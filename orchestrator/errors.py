"""One exception tree for deployctl; the CLI maps classes to exit codes once, at the top.

    DeployctlError                      exit 1  operation failed
    ├── BadInputError                   exit 2  usage, invalid task file, unknown model/GPU
    ├── GuardrailRefusedError           exit 3  budget or limits refused the operation
    ├── NoOfferFitsError                exit 4  no offer satisfies the requirements
    └── ProviderError                   exit 1  a provider API said no (translated at the adapter)
        ├── CredentialsError                    401/403 or missing key: never retried
        ├── OfferUnavailableError               the offer vanished between quote and rent
        ├── LaunchFailedError                   created something, then failed (carries its id)
        └── RetryableProviderError              the only branch that is retried
            ├── RateLimitedError                429
            ├── ProviderUnavailableError        5xx, connection refused/reset
            └── ProviderTimeoutError            no answer within the deadline

Messages are one sentence for a person; they never contain secrets (see `redact`).
"""

from __future__ import annotations

import re

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_NO_FIT",
    "EXIT_OK",
    "EXIT_REFUSED",
    "BadInputError",
    "CredentialsError",
    "DeployctlError",
    "GuardrailRefusedError",
    "LaunchFailedError",
    "NoOfferFitsError",
    "OfferUnavailableError",
    "ProviderError",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "RetryableProviderError",
    "redact",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_NO_FIT = 4

# Strings that look like credentials: bearer tokens, api_key query params, long hex/base64 keys.
_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)(api_key=)[^&\s]+"),
    re.compile(r"(?i)(authorization:\s*)\S+"),
    re.compile(r"\b(hf_)[A-Za-z0-9]{10,}"),
    re.compile(r"\b(rpa_)[A-Za-z0-9]{10,}"),
]


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove known secret values and anything shaped like a credential from `text`."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    return text


class DeployctlError(Exception):
    """Root of every error deployctl raises on purpose."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class BadInputError(DeployctlError):
    """Input we cannot accept; the message names the field and what is accepted."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, field: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{field}: {message}", hint=hint)
        self.field = field


class GuardrailRefusedError(DeployctlError):
    """A budget or limit refused the operation before anything was created."""

    exit_code = EXIT_REFUSED


class NoOfferFitsError(DeployctlError):
    """No offer satisfies the task; `nearest` holds the closest misses for the user."""

    exit_code = EXIT_NO_FIT

    def __init__(self, message: str, *, nearest: list | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.nearest = nearest or []


class ProviderError(DeployctlError):
    """A provider API refused or failed; `provider` names which one."""

    def __init__(self, provider: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{provider}: {redact(message)}", hint=hint)
        self.provider = provider


class CredentialsError(ProviderError):
    """Missing or rejected credentials (HTTP 401/403). Never retried."""


class OfferUnavailableError(ProviderError):
    """The offer was taken or withdrawn between quote and rent: try the next candidate."""


class LaunchFailedError(ProviderError):
    """Launch created an instance and then failed: the launcher must destroy `instance_id`."""

    def __init__(self, provider: str, message: str, *, instance_id: str | None = None) -> None:
        super().__init__(provider, message)
        self.instance_id = instance_id


class RetryableProviderError(ProviderError):
    """Transient: rate limits, 5xx, dropped connections, timeouts. Retried with backoff."""


class RateLimitedError(RetryableProviderError):
    """HTTP 429."""


class ProviderUnavailableError(RetryableProviderError):
    """HTTP 5xx or a connection that failed."""


class ProviderTimeoutError(RetryableProviderError):
    """No answer within the deadline."""
