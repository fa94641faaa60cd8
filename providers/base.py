"""The Provider protocol every adapter implements, and shared HTTP helpers.

Contract (see DESIGN §3):
- `check_credentials()` never raises for a missing key: it returns ok=False and a hint.
- `list_offers(query)` returns normalised `Offer`s; it may over-return (the core re-filters
  with `orchestrator.offers.matches`), but it never returns an offer whose GPU it could not
  name: unknown GPU names are collected in `unknown_gpu_names` and reported.
- Vendor errors are translated here into `orchestrator.errors`; only the retryable branch
  is retried (`orchestrator.retry`).
- `launch` returns fast (it does not wait for the instance to run); waiting, readiness,
  retries and fallback belong to the launcher. If it fails after something was created,
  it raises `LaunchFailedError` carrying the instance id, so the launcher destroys it.
- `get` returns None when the instance is gone; `terminate` is idempotent (gone is
  success) and never merely stops: stopped instances still bill storage.
- Instances carry the label `deployctl-<deployment id>`; `list_instances` filters on a
  label prefix so `reap` can find what the journal does not account for.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Protocol, runtime_checkable

from orchestrator.errors import (
    CredentialsError,
    OfferUnavailableError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
)
from orchestrator.models import ContainerSpec, CredentialStatus, Instance, Offer, OfferQuery
from orchestrator.retry import DEFAULT_POLICY, RetryPolicy, call_with_retries

__all__ = ["HttpApi", "KeyedProvider", "Provider", "canonical_gpu", "env_secret"]

USER_AGENT = "deployctl/0.1"


@runtime_checkable
class Provider(Protocol):
    """What the core needs from a GPU provider."""

    name: ClassVar[str]

    def check_credentials(self) -> CredentialStatus:
        """ok, or missing/invalid with a one-line hint on how to fix it. Never raises."""
        ...

    def list_offers(self, query: OfferQuery) -> list[Offer]:
        """Offers matching `query` (may over-return). Raises ProviderError subclasses."""
        ...

    def launch(
        self, offer: Offer, spec: ContainerSpec, *, name: str, labels: dict[str, str]
    ) -> Instance:
        """Rent `offer` and start `spec` on it; returns at once (state pending or running).
        OfferUnavailableError when the offer is gone; LaunchFailedError(instance_id=...)
        when something was created and then failed."""
        ...

    def get(self, instance_id: str) -> Instance | None:
        """The instance now, or None when it is gone (destroyed, or never existed)."""
        ...

    def list_instances(self, label_prefix: str = "deployctl-") -> list[Instance]:
        """Every live instance whose label starts with `label_prefix`."""
        ...

    def terminate(self, instance_id: str) -> None:
        """Destroy the instance (never just stop it). Idempotent: gone is success."""
        ...


def canonical_gpu(
    names: list[str], *, vram_mib: float | None, hint: str, unknown: set[str]
) -> str | None:
    """The canonical GPU for the first of `names` that normalises, else None.

    A name that is neither a GPU we know nor a known non-CUDA accelerator (TPU, AMD, ...)
    is added to `unknown`, so the CLI can report it instead of dropping it silently.
    """
    from orchestrator.hardware import classify_accelerator, normalize_gpu_name

    for name in names:
        if name:
            gpu = normalize_gpu_name(name, vram_mib=vram_mib, hint=hint)
            if gpu is not None:
                return gpu
    if not any(classify_accelerator(name) for name in names if name):
        unknown.add(names[0] if names else "")
    return None


def env_secret(name: str) -> str | None:
    """A credential from the environment, stripped; else from the user's private
    credentials file (`orchestrator.credentials`, which refuses a file others can read);
    None when neither has it."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    from orchestrator.credentials import stored_secret

    return stored_secret(name)


class KeyedProvider:
    """What the adapters that hold one account key share: the key (argument, else the
    environment, else `deployctl login`'s store), the API's base URL (argument, else
    `url_env`, else `default_url`), timeout and retry policy, the credential check and an
    `HttpApi` that sends the key as a bearer token. Subclasses set the class attributes."""

    name: ClassVar[str]
    key_env: ClassVar[str]  # VAST_API_KEY, RUNPOD_API_KEY, HF_TOKEN
    url_env: ClassVar[str]
    default_url: ClassVar[str]
    key_hint: ClassVar[str]  # how to set the key, said with every credentials error

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 10.0,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self.api_key = (api_key or "").strip() or env_secret(self.key_env)
        self.base_url = (base_url or os.environ.get(self.url_env) or self.default_url).rstrip("/")
        self.timeout_s = timeout_s
        self.policy = policy
        self.unknown_gpu_names: set[str] = set()  # vendor GPU names of the last listing

    def check_credentials(self) -> CredentialStatus:
        """Whether a key is configured (the first real call validates it)."""
        if not self.api_key:
            return CredentialStatus(ok=False, hint=self.key_hint)
        return CredentialStatus(ok=True)

    def _require_key(self) -> str:
        if not self.api_key:
            raise CredentialsError(self.name, f"no {self.key_env} configured", hint=self.key_hint)
        return self.api_key

    def _api(self, policy: RetryPolicy | None = None, timeout_s: float | None = None) -> HttpApi:
        key = self._require_key()
        return HttpApi(
            self.name,
            self.base_url,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            timeout_s=timeout_s or self.timeout_s,
            policy=policy or self.policy,
            secrets=(key,),
        )


class HttpApi:
    """A small httpx wrapper: base URL, auth header, timeouts, error translation, retries.

    Status codes map to the error tree: 401/403 -> CredentialsError, 404/410 ->
    OfferUnavailableError when `missing_is_unavailable`, 429 -> RateLimitedError,
    5xx -> ProviderUnavailableError, transport timeouts -> ProviderTimeoutError,
    other transport errors -> ProviderUnavailableError.
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout_s: float = 10.0,
        policy: RetryPolicy = DEFAULT_POLICY,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self.timeout_s = timeout_s
        self.policy = policy
        self.secrets = secrets

    def request_json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        missing_is_unavailable: bool = False,
    ) -> Any:
        """Send one request (with bounded retries) and return the decoded JSON body."""

        def once() -> Any:
            return self._once(method, path, json, params, missing_is_unavailable)

        return call_with_retries(once, self.policy)

    def _once(
        self,
        method: str,
        path: str,
        json: Any,
        params: dict[str, Any] | None,
        missing_is_unavailable: bool,
    ) -> Any:
        import httpx  # imported on first use: the CLI must start fast

        url = f"{self.base_url}{path}"
        try:
            with httpx.Client(timeout=self.timeout_s, headers=self.headers) as client:
                response = client.request(method, url, json=json, params=params)
        except httpx.TimeoutException as exc:
            raise ProviderTimeoutError(
                self.provider, f"no answer from {self.base_url} within {self.timeout_s:g} s"
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailableError(
                self.provider, f"cannot reach {self.base_url} ({type(exc).__name__})"
            ) from exc
        self._raise_for_status(response, missing_is_unavailable)
        try:
            return response.json()
        except ValueError as exc:
            raise ProviderUnavailableError(
                self.provider, f"{method} {path} returned a body that is not JSON"
            ) from exc

    def _raise_for_status(self, response, missing_is_unavailable: bool) -> None:
        status = response.status_code
        if status < 400:
            return
        detail = self._detail(response)
        where = f"{response.request.method} {response.request.url.path}"
        if status in (401, 403):
            raise CredentialsError(
                self.provider, f"the API key was rejected (HTTP {status}) on {where}"
            )
        if status == 429:
            raise RateLimitedError(self.provider, f"rate limited (HTTP 429) on {where}")
        if status >= 500:
            raise ProviderUnavailableError(self.provider, f"HTTP {status} on {where}{detail}")
        if status in (404, 410) and missing_is_unavailable:
            raise OfferUnavailableError(self.provider, f"not found (HTTP {status}) on {where}")
        raise ProviderError(self.provider, f"HTTP {status} on {where}{detail}")

    def _detail(self, response) -> str:
        text = response.text.strip().replace("\n", " ")[:200]
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return f": {text}" if text else ""
