"""The SkyPilot provider: AWS, GCP, Azure, Lambda and the other clouds SkyPilot reaches.

Offers come from SkyPilot's own local catalog cache (or a `--catalog DIR`), read through
`orchestrator.catalog`, so listing never imports the SDK (`import sky` takes seconds and
pins click). vast and runpod are left out unless asked for by name: they have native
adapters with live prices. Offers keep source="catalog" and the files' date.

Where SkyPilot keeps its cache (read from sky/catalog/common.py and sky/skylet/, 0.14.1):
    ${SKY_RUNTIME_DIR:-~}/.sky/catalogs/<CATALOG_SCHEMA_VERSION>/<cloud>/vms.csv
with CATALOG_SCHEMA_VERSION = "v8" in 0.14 (older releases used v7 and before). The version is
read from the installed SDK's `sky/skylet/constants.py` as text, without importing it;
when that directory is absent, the newest `v<N>` directory present is used.

Lifecycle (SkyPilot 0.14's SDK is a client of its API server: every call submits a
request and returns its id; `sky.get(id)` waits for the result and raises the request's
exception; read from sky/client/sdk.py):

- launch: a real `sky.Task` (run = the spec's bootstrap, envs, secrets) with one
  `sky.Resources` (cloud, region, instance type, accelerators by SkyPilot's own name,
  use_spot, ports = the guard's port, image_id `docker:<image>`, disk_size, autostop with
  down), then `sky.launch(task, cluster_name=<label>, idle_minutes_to_autostop=...,
  down=True)`. The request id comes back at once; provisioning goes on in the API server
  and `get` follows it. The cluster name is the label `deployctl-<id>`.
- teardown inside the instance: "autodown does it". The guard exits after keep_alive or
  ttl, the job ends, and SkyPilot's autostop (down=True, waiting for jobs only) tears the
  cluster down after `idle_minutes_to_autostop`.
- get: `sky.status(cluster_names=[name])`: UP -> running with the endpoint from
  `sky.endpoints(name, port)`, INIT -> pending, STOPPED/AUTOSTOPPING -> exited, absent ->
  None. A launch request of this process that is still provisioning is pending; one that
  failed is exited with its reason.
- list_instances: `sky.status()` records whose name starts with the prefix.
- terminate: cancel this process's unfinished launch request, then `sky.down(name)` and
  wait; ClusterDoesNotExist is success.

Every SDK call sits in the `_sdk_*` methods (the adapter seam) and goes through `_sky()`,
the only place that imports the SDK: never at import time, never for listing offers or
`check_credentials`. SDK exceptions are translated there by class name (no import):
ResourcesUnavailableError -> OfferUnavailableError, cloud-credential errors ->
CredentialsError, API-server connection errors -> ProviderUnavailableError, the rest ->
ProviderError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from orchestrator.catalog import (
    NATIVE_PROVIDER_CLOUDS,
    CatalogResult,
    catalog_files,
    read_catalog_dir,
)
from orchestrator.errors import (
    BadInputError,
    CredentialsError,
    LaunchFailedError,
    OfferUnavailableError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from orchestrator.models import (
    ContainerSpec,
    CredentialStatus,
    Instance,
    InstanceState,
    Offer,
    OfferQuery,
)
from orchestrator.offers import matches
from orchestrator.retry import DEFAULT_POLICY, RetryPolicy, call_with_retries

__all__ = ["SkyPilotProvider", "autostop_minutes", "sky_catalog_dir", "translate_sdk_error"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'deployctl[skypilot]' and run `sky check`"
NO_CATALOG_HINT = "run `sky check` (or pass --catalog DIR)"
_RUNTIME_DIR_ENV = "SKY_RUNTIME_DIR"  # sky.skylet.constants.SKY_RUNTIME_DIR_ENV_VAR_KEY
_SCHEMA_VERSION = re.compile(r"""^CATALOG_SCHEMA_VERSION\s*=\s*['"](v\d+)['"]""", re.M)

LABEL_PREFIX = "deployctl-"
GUARD_PORT = 8000  # ContainerSpec.guard_port's default: the only port a cluster opens
DEFAULT_KEEP_ALIVE_S = 900
# Autostop counts idleness from the end of the last job only: an SSH session left open
# must not keep a cluster (and its bill) alive once the guard has exited.
AUTOSTOP_WAIT_FOR = "jobs"
_FINISHED_REQUEST = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


def sdk_installed() -> bool:
    """Whether the SkyPilot SDK can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("sky") is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def _installed_schema_version() -> str | None:
    """CATALOG_SCHEMA_VERSION of the installed SDK, read from its source text."""
    try:
        spec = importlib.util.find_spec("sky")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    constants = Path(spec.origin).parent / "skylet" / "constants.py"
    try:
        match = _SCHEMA_VERSION.search(constants.read_text(encoding="utf-8"))
    except OSError:
        return None
    return match.group(1) if match else None


def sky_catalog_dir() -> Path:
    """SkyPilot's versioned catalog cache directory (it may not exist)."""
    runtime_dir = os.path.expanduser(os.environ.get(_RUNTIME_DIR_ENV, "~"))
    base = Path(runtime_dir) / ".sky" / "catalogs"
    version = _installed_schema_version()
    if version and (base / version).is_dir():
        return base / version
    try:
        present = [p for p in base.iterdir() if p.is_dir() and re.fullmatch(r"v\d+", p.name)]
    except OSError:
        present = []
    if present:
        return max(present, key=lambda p: int(p.name[1:]))
    return base / (version or "v8")


# The guard enforces keep_alive and ttl and then exits, which ends the cluster's only job;
# SkyPilot's autostop (wait_for="jobs", down=True) counts idle time only once no job runs,
# so one more idle minute is all it should wait before tearing the cluster down.
AUTOSTOP_AFTER_GUARD_MIN = 1


def autostop_minutes(spec: ContainerSpec) -> int:
    """idle_minutes_to_autostop: one minute after the guard's job ends (see above)."""
    return AUTOSTOP_AFTER_GUARD_MIN


@dataclasses.dataclass
class _Outcome:
    done: bool
    error: ProviderError | None = None


@dataclasses.dataclass
class _Launch:
    """A launch request this process submitted (SkyPilot lists the cluster only once
    provisioning starts; until then the request is all there is)."""

    request_id: str
    price_per_hour_usd: float
    gpu: str
    port: int
    outcome: _Outcome | None = None


class SkyPilotProvider:
    """Offers from SkyPilot's catalog; clusters through the SkyPilot SDK."""

    name: ClassVar[str] = "skypilot"
    teardown: ClassVar[str] = "skypilot"  # the guard exits; autostop with down=True downs it

    def __init__(
        self,
        catalog_dir: str | Path | None = None,
        clouds: list[str] | None = None,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self.catalog_dir = Path(catalog_dir).expanduser() if catalog_dir else None
        self.clouds = [c.lower() for c in clouds] if clouds else None
        self.unknown_gpu_names: set[str] = set()  # vendor names of the last listing
        self.skipped_accelerators: dict[str, str] = {}
        self.last_result: CatalogResult | None = None
        self.policy = policy
        self._launches: dict[str, _Launch] = {}  # cluster name -> its launch request

    def catalog_root(self) -> Path:
        return self.catalog_dir if self.catalog_dir is not None else sky_catalog_dir()

    def check_credentials(self) -> CredentialStatus:
        if not sdk_installed():
            return CredentialStatus(ok=False, hint=INSTALL_HINT)
        if not self._catalog_files():
            return CredentialStatus(ok=False, hint=NO_CATALOG_HINT)
        return CredentialStatus(ok=True)

    def list_offers(self, query: OfferQuery) -> list[Offer]:
        """Catalog offers matching `query` (the same predicate the core applies)."""
        files = self._catalog_files()
        if not files:
            raise CredentialsError(
                self.name,
                f"no SkyPilot catalog found at {self.catalog_root()}",
                hint=NO_CATALOG_HINT,
            )
        if self.clouds is not None:
            clouds = set(self.clouds)
        else:
            clouds = {c for c in files if c not in NATIVE_PROVIDER_CLOUDS}
        result = read_catalog_dir(self.catalog_root(), clouds=clouds, provider=self.name)
        self.last_result = result
        self.unknown_gpu_names = set(result.unknown_gpu_names)
        self.skipped_accelerators = result.skipped_accelerators
        return [offer for offer in result.offers if matches(offer, query)]

    def _catalog_files(self) -> list[str]:
        root = self.catalog_root()
        if not root.exists():
            return []
        return list(catalog_files(root))

    # ------------------------------------------------------------------ lifecycle

    def launch(
        self, offer: Offer, spec: ContainerSpec, *, name: str, labels: dict[str, str]
    ) -> Instance:
        """Submit `sky.launch` for `offer` and return at once (PENDING, id = cluster name).

        The launch request provisions in SkyPilot's API server; `get` follows it. Nothing
        is retried: a launch costs money. Errors raised while submitting are translated;
        any other than "unavailable" or credentials raise LaunchFailedError carrying the
        cluster name, so the launcher downs whatever the request may have created.
        """
        try:
            task = self.build_task(offer, spec, name=name)
        except (BadInputError, ProviderError):
            raise
        except Exception as exc:  # SkyPilot rejected a field: nothing was created
            raise translate_sdk_error(exc, f"building the task for {offer.key}") from exc
        idle_minutes = autostop_minutes(spec)
        try:
            request_id = self._sdk_launch(task, name, idle_minutes)
        except Exception as exc:
            err = translate_sdk_error(exc, f"launching {name}")
            if isinstance(err, (OfferUnavailableError, CredentialsError)):
                raise err from exc
            raise LaunchFailedError(self.name, str(err), instance_id=name) from exc
        self._launches[name] = _Launch(
            request_id, offer.price_per_hour_usd, offer.gpu, spec.guard_port
        )
        return Instance(
            provider=self.name,
            instance_id=name,
            state=InstanceState.PENDING,
            price_per_hour_usd=offer.price_per_hour_usd,
            started_at=datetime.now(timezone.utc),
            labels={**_labels_for(name), **labels},
            gpu=offer.gpu,
            message="launch submitted",
            raw={"request_id": request_id, "idle_minutes_to_autostop": idle_minutes},
        )

    def build_task(self, offer: Offer, spec: ContainerSpec, *, name: str) -> Any:
        """The real `sky.Task` (with one `sky.Resources`) for `offer` running `spec`.

        Built offline: neither constructor validates against clouds or credentials (that
        is `Task.validate()`/`Resources.validate()`, which the API server runs on launch).
        """
        sky = _sky()
        if not offer.cloud:
            raise BadInputError("offer", f"{offer.key} names no SkyPilot cloud")
        accelerator = str(offer.raw.get("accelerator_name") or offer.gpu)
        resources = sky.Resources(
            cloud=sky.CLOUD_REGISTRY.from_str(offer.cloud),
            region=offer.region or None,
            instance_type=offer.instance_type or None,
            accelerators={accelerator: offer.gpu_count},
            use_spot=offer.spot,
            ports=[spec.guard_port],
            image_id=f"docker:{spec.image}",
            disk_size=spec.disk_gib,
            # The same autodown launch() asks for, recorded in the task itself.
            autostop={
                "idle_minutes": autostop_minutes(spec),
                "down": True,
                "wait_for": AUTOSTOP_WAIT_FOR,
            },
        )
        return sky.Task(
            name=name,
            run=spec.bootstrap,
            envs=dict(spec.env),
            # SkyPilot exports secrets to the job like envs, and redacts them in its logs,
            # dashboard and YAML dumps: the endpoint key and HF token go there.
            secrets={k: v.get_secret_value() for k, v in spec.secret_env.items()},
            resources=resources,
        )

    def get(self, instance_id: str) -> Instance | None:
        """The cluster now: UP -> running (with the guard's endpoint), INIT -> pending,
        STOPPED/AUTOSTOPPING -> exited, absent -> None. While this process's launch
        request is still provisioning the cluster is pending even before SkyPilot lists
        it; a launch request that failed makes it exited, with the reason."""
        launch = self._launches.get(instance_id)
        outcome: _Outcome | None = None
        if launch is not None:
            outcome = self._launch_outcome(instance_id, launch)
        records = self._status([instance_id], refresh=outcome is None or outcome.done)
        record = next((r for r in records if _field(r, "name") == instance_id), None)
        if outcome is not None and outcome.error is not None:
            reason = str(outcome.error).removeprefix(f"{self.name}: ")
            return self._instance(
                instance_id, record, InstanceState.EXITED, message=f"launch failed: {reason}"
            )
        if record is None:
            if outcome is not None and not outcome.done:
                return self._instance(instance_id, None, InstanceState.PENDING, "launch queued")
            return None
        return self._from_record(record)

    def list_instances(self, label_prefix: str = "deployctl-") -> list[Instance]:
        """Every cluster of this user whose name starts with `label_prefix`."""
        found = []
        for record in self._status(None, refresh=True):
            name = str(_field(record, "name") or "")
            if name.startswith(label_prefix):
                found.append(self._from_record(record, endpoint=False))
        return found

    def terminate(self, instance_id: str) -> None:
        """Cancel this process's launch request if still running, then `sky.down` and wait
        for it. A cluster SkyPilot does not know is success (idempotent)."""
        launch = self._launches.get(instance_id)
        if launch is not None:
            outcome = self._launch_outcome(instance_id, launch)
            if not outcome.done:
                try:
                    self._sdk_cancel(launch.request_id)
                except Exception as exc:  # down below is what matters
                    logger.warning("cancelling the launch of %s failed: %s", instance_id, exc)

        def down() -> None:
            try:
                self._sdk_down(instance_id)
            except Exception as exc:
                if _is_sky_error(exc, "ClusterDoesNotExist"):
                    return
                raise translate_sdk_error(exc, f"downing {instance_id}") from exc

        call_with_retries(down, self.policy)
        self._launches.pop(instance_id, None)

    # ------------------------------------------------------------------ record mapping

    def _from_record(self, record: Any, *, endpoint: bool = True) -> Instance:
        name = str(_field(record, "name"))
        status = _status_name(_field(record, "status"))
        if status == "UP":
            if not endpoint:
                return self._instance(name, record, InstanceState.RUNNING)
            url = self._endpoint(name)
            if url is None:
                return self._instance(name, record, InstanceState.PENDING, "port not open yet")
            return self._instance(name, record, InstanceState.RUNNING, endpoint_url=url)
        if status == "INIT":
            reason = _field(record, "init_status_reason") or "provisioning"
            return self._instance(name, record, InstanceState.PENDING, str(reason))
        if status in ("STOPPED", "AUTOSTOPPING"):
            return self._instance(name, record, InstanceState.EXITED, status.lower())
        return self._instance(name, record, InstanceState.PENDING, status.lower())

    def _instance(
        self,
        name: str,
        record: Any,
        state: InstanceState,
        message: str = "",
        *,
        endpoint_url: str | None = None,
    ) -> Instance:
        launch = self._launches.get(name)
        started_at = None
        launched_at = _field(record, "launched_at") if record is not None else None
        if isinstance(launched_at, (int, float)) and launched_at > 0:
            started_at = datetime.fromtimestamp(launched_at, timezone.utc)
        raw: dict[str, Any] = {"name": name}
        if record is not None:
            for key in ("status", "autostop", "to_down", "cloud", "region", "resources_str"):
                value = _field(record, key)
                if value is not None:
                    raw[key] = _status_name(value) if key == "status" else value
        if launch is not None:
            raw["request_id"] = launch.request_id
        return Instance(
            provider=self.name,
            instance_id=name,
            state=state,
            endpoint_url=endpoint_url,
            price_per_hour_usd=launch.price_per_hour_usd if launch else 0.0,
            started_at=started_at,
            labels=_labels_for(name),
            gpu=launch.gpu if launch else None,
            message=message,
            raw=raw,
        )

    def _endpoint(self, name: str) -> str | None:
        """http(s)://host:port of the guard, or None while SkyPilot has not opened it."""
        launch = self._launches.get(name)
        port = launch.port if launch is not None else GUARD_PORT
        try:
            endpoints = call_with_retries(lambda: self._endpoints(name, port), self.policy)
        except ProviderError as exc:
            logger.debug("no endpoint for %s yet: %s", name, exc)
            return None
        url = (endpoints.get(port) or endpoints.get(str(port))) if endpoints else None
        if not url:
            return None
        url = str(url).rstrip("/")
        return url if "://" in url else f"http://{url}"

    def _endpoints(self, name: str, port: int) -> dict:
        try:
            return dict(self._sdk_endpoints(name, port) or {})
        except Exception as exc:
            raise translate_sdk_error(exc, f"endpoints of {name}") from exc

    def _status(self, names: list[str] | None, *, refresh: bool) -> list[Any]:
        def once() -> list[Any]:
            try:
                return list(self._sdk_status(names, refresh=refresh) or [])
            except Exception as exc:
                raise translate_sdk_error(exc, "sky status") from exc

        return call_with_retries(once, self.policy)

    def _launch_outcome(self, name: str, launch: _Launch) -> _Outcome:
        """Whether this process's launch request has finished, and its error if it failed."""
        if launch.outcome is not None:
            return launch.outcome
        try:
            done, error = self._sdk_launch_result(launch.request_id)
        except Exception as exc:
            logger.debug("cannot read launch request %s: %s", launch.request_id, exc)
            return _Outcome(done=False)
        outcome = _Outcome(
            done=done,
            error=translate_sdk_error(error, f"launching {name}") if error is not None else None,
        )
        if done:
            launch.outcome = outcome
        return outcome

    # ------------------------------------------------------------------ the adapter seam
    # Every SkyPilot SDK call is in these methods. SkyPilot 0.14's SDK is a client of its
    # API server: each call submits a request and returns its id; `sky.get(id)` waits for
    # the result and raises the request's exception (sky/client/sdk.py).

    def _sdk_launch(self, task: Any, cluster_name: str, idle_minutes: int) -> str:
        """sky.launch(...) -> request id, without waiting for provisioning."""
        sky = _sky()
        from sky.skylet import autostop_lib

        with _quiet_sdk(sky):
            return sky.launch(
                task,
                cluster_name=cluster_name,
                idle_minutes_to_autostop=idle_minutes,
                down=True,
                wait_for=autostop_lib.AutostopWaitFor.from_str(AUTOSTOP_WAIT_FOR),
                retry_until_up=False,
            )

    def _sdk_launch_result(self, request_id: str) -> tuple[bool, BaseException | None]:
        """(finished, the exception it failed with) of a launch request, without blocking."""
        sky = _sky()
        with _quiet_sdk(sky):
            payloads = sky.api_status([request_id])
            if not payloads:
                return True, None  # the API server forgot it (restarted): the records tell
            if _status_name(payloads[0].status) not in _FINISHED_REQUEST:
                return False, None
            try:
                sky.get(request_id)  # finished: returns at once, raising the request's error
            except Exception as exc:
                return True, exc
        return True, None

    def _sdk_status(self, cluster_names: list[str] | None, *, refresh: bool) -> list[Any]:
        """sky.status(...) cluster records (dict-like StatusResponse)."""
        sky = _sky()
        mode = sky.StatusRefreshMode.AUTO if refresh else sky.StatusRefreshMode.NONE
        with _quiet_sdk(sky):
            return sky.get(sky.status(cluster_names=cluster_names, refresh=mode))

    def _sdk_endpoints(self, cluster_name: str, port: int) -> dict:
        """sky.endpoints(cluster, port) -> {port: 'host:port' or URL}."""
        sky = _sky()
        with _quiet_sdk(sky):
            return sky.get(sky.endpoints(cluster_name, port))

    def _sdk_down(self, cluster_name: str) -> None:
        """sky.down(cluster) and wait until it is torn down."""
        sky = _sky()
        with _quiet_sdk(sky):
            sky.get(sky.down(cluster_name))

    def _sdk_cancel(self, request_id: str) -> None:
        """Abort a request still queued or running (a launch being torn down)."""
        sky = _sky()
        with _quiet_sdk(sky):
            sky.get(sky.api_cancel(request_id, silent=True))


@contextlib.contextmanager
def _quiet_sdk(sky: ModuleType) -> Iterator[None]:
    """Keep the SDK's chatter off deployctl's stdout (`--json` output must stay clean):
    its info logs are silenced (errors still log) and what it echoes goes to stderr."""
    from sky import sky_logging

    with sky_logging.silent(), contextlib.redirect_stdout(sys.stderr):
        yield


def _sky() -> ModuleType:
    """Import the SkyPilot SDK (seconds): only for lifecycle calls, never for listing."""
    try:
        import sky
    except ImportError as exc:
        raise CredentialsError(
            "skypilot", "the SkyPilot SDK is not installed", hint=INSTALL_HINT
        ) from exc
    return sky


# ---------------------------------------------------------------------- helpers


def _labels_for(name: str) -> dict[str, str]:
    return {"deployctl": name[len(LABEL_PREFIX) :]} if name.startswith(LABEL_PREFIX) else {}


def _field(record: Any, key: str) -> Any:
    """A field of a status record: StatusResponse (0.14, dict-like) or a plain dict."""
    if isinstance(record, dict):
        return record.get(key)
    return getattr(record, key, None)


def _status_name(value: Any) -> str:
    """'UP' from ClusterStatus.UP, 'UP' or 'ClusterStatus.UP'."""
    value = getattr(value, "value", value)
    return str(value).rsplit(".", 1)[-1].upper()


def _sky_error_names(exc: BaseException) -> set[str]:
    """Class names in `exc`'s hierarchy that come from sky.exceptions (nothing imported)."""
    return {c.__name__ for c in type(exc).__mro__ if c.__module__ == "sky.exceptions"}


def _is_sky_error(exc: BaseException, name: str) -> bool:
    return name in _sky_error_names(exc)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # SkyPilot colours its messages
_CREDENTIAL_ERRORS = frozenset(
    {
        "NoCloudAccessError",
        "CloudUserIdentityError",
        "InvalidCloudCredentials",
        "ClusterOwnerIdentityMismatchError",
        "ApiServerAuthenticationError",
        "PermissionDeniedError",
    }
)
_UNAVAILABLE_ERRORS = frozenset(
    {"ApiServerConnectionError", "ServerTemporarilyUnavailableError", "RequestInterruptedError"}
)


def translate_sdk_error(exc: BaseException, what: str) -> ProviderError:
    """The deployctl error for an exception the SkyPilot SDK raised while `what`."""
    if isinstance(exc, ProviderError):
        return exc
    names = _sky_error_names(exc)
    first_line = (_ANSI.sub("", str(exc)).strip().splitlines() or [""])[0][:300]
    detail = f"{what}: {first_line or type(exc).__name__}"
    if "ResourcesUnavailableError" in names:
        return OfferUnavailableError("skypilot", f"{detail} (no capacity or not offered)")
    if names & _CREDENTIAL_ERRORS:
        return CredentialsError("skypilot", detail, hint="run `sky check`")
    if names & _UNAVAILABLE_ERRORS:
        return ProviderUnavailableError("skypilot", detail)
    module = type(exc).__module__
    if module.startswith(("requests.", "urllib3.")):
        if "Timeout" in type(exc).__name__:
            return ProviderTimeoutError("skypilot", detail)
        return ProviderUnavailableError("skypilot", f"{detail} (SkyPilot API server)")
    return ProviderError("skypilot", f"{detail} ({type(exc).__name__})")
