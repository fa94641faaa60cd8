"""The SkyPilot adapter's lifecycle against a fake of the SDK's calls, and only those.

`sky.launch`, `sky.status`, `sky.endpoints`, `sky.down`, `sky.get`, `sky.api_status` and
`sky.api_cancel` are replaced by `FakeSky`, which holds cluster records and request ids
the way SkyPilot 0.14's API server does (every call returns a request id; `sky.get(id)`
returns the result or raises the request's exception). Everything else is the installed
SDK: the `sky.Task`/`sky.Resources` the adapter builds are real and are checked against
golden `Task.to_yaml_config()` files in tests/contract/golden/.

The one other thing replaced is SkyPilot's catalog lookup of an instance type's memory
(`sky.catalog.get_vcpus_mem_from_instance_type`, which `to_yaml_config` consults and which
would download a catalog, and for AWS look up the account's zone mapping): it reads the
snapshot in tests/fixtures/catalog instead. Sockets are blocked: nothing reaches a network.

Regenerate the golden files after an intended change with
    DEPLOYCTL_UPDATE_GOLDEN=1 pytest tests/contract/test_skypilot_lifecycle.py
"""

from __future__ import annotations

import csv
import difflib
import functools
import importlib
import itertools
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.engines import build_spec
from orchestrator.errors import (
    CredentialsError,
    LaunchFailedError,
    OfferUnavailableError,
    ProviderError,
    ProviderUnavailableError,
)
from orchestrator.models import ContainerSpec, InstanceState, Offer, OfferQuery, TaskSpec
from orchestrator.retry import RetryPolicy
from providers.skypilot import SkyPilotProvider, autostop_minutes, sdk_installed

pytestmark = [
    pytest.mark.skypilot,
    pytest.mark.skipif(not sdk_installed(), reason="the SkyPilot SDK is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
CATALOG_DIR = ROOT / "tests" / "fixtures" / "catalog"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("DEPLOYCTL_UPDATE_GOLDEN") == "1"
VOLATILE_ENV = re.compile(r"DEPLOYCTL_GUARD_(B64|\d+)")  # the shipped guard's text
FAST_POLICY = RetryPolicy(attempts=3, deadline_s=2.0, base_s=0.001, cap_s=0.005)
NAME = "deployctl-abc123"

# A fixed spec for the golden files: they must not change when the engines do.
GOLDEN_BOOTSTRAP = "set -eu\nexec python3 /opt/deployctl/guard.py -- vllm serve m --port 8001\n"
GOLDEN_SPEC = ContainerSpec(
    image="vllm/vllm-openai:v0.10.2",
    command=["vllm", "serve", "m", "--port", "{port}"],
    env={
        "DEPLOYCTL_KEEP_ALIVE_S": "600",
        "DEPLOYCTL_TTL_S": "14400",
        "DEPLOYCTL_TEARDOWN": "skypilot",
        "DEPLOYCTL_GUARD_PORT": "8000",
        "DEPLOYCTL_ENGINE_PORT": "8001",
        "DEPLOYCTL_GUARD_B64": "cHJpbnQoJ2d1YXJkJyk=",
    },
    secret_env={"DEPLOYCTL_ENDPOINT_KEY": "dk-secret-key", "HF_TOKEN": "hf_goldentoken1234"},
    disk_gib=60,
    model_name="m",
    bootstrap=GOLDEN_BOOTSTRAP,
)

GOLDEN_OFFERS = {
    # aws: instance type given, spot, L4 named as in the catalog
    "aws_l4_spot": "aws:g6.xlarge:us-east-1:spot",
    # gcp: accelerator-only offer (no instance type); canonical A100-SXM4-80GB -> A100-80GB
    "gcp_a100_80gb": "gcp:1xA100-80GB:us-central1:ondemand",
    # lambda: canonical H100-PCIE -> SkyPilot's H100
    "lambda_h100": "lambda:gpu_1x_h100_pcie:us-east-1:ondemand",
}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any socket connection in these tests is a bug: SkyPilot must stay offline."""

    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def sky(monkeypatch):
    """The real SDK module, with the catalog's instance-type lookup served offline."""
    sky = pytest.importorskip("sky")
    catalog = importlib.import_module("sky.catalog")
    monkeypatch.setattr(catalog, "get_vcpus_mem_from_instance_type", _fixture_vcpus_mem)
    return sky


@pytest.fixture
def fake(sky, monkeypatch) -> FakeSky:
    fake = FakeSky(sky)
    for name in ("launch", "status", "endpoints", "down", "get", "api_status", "api_cancel"):
        monkeypatch.setattr(sky, name, getattr(fake, name))
    return fake


@pytest.fixture
def provider() -> SkyPilotProvider:
    return SkyPilotProvider(catalog_dir=CATALOG_DIR, policy=FAST_POLICY)


@functools.cache
def _offers() -> dict[str, Offer]:
    listed = SkyPilotProvider(catalog_dir=CATALOG_DIR).list_offers(OfferQuery(spot=None))
    return {o.offer_id: o for o in listed}


def offer(offer_id: str = GOLDEN_OFFERS["aws_l4_spot"]) -> Offer:
    return _offers()[offer_id]


@functools.cache
def _catalog_rows(cloud: str) -> dict[str, tuple[float | None, float | None]]:
    rows = {}
    with open(CATALOG_DIR / f"{cloud}.csv", newline="", encoding="ascii") as fh:
        for row in csv.DictReader(fh):
            cpus, mem = row.get("vCPUs") or None, row.get("MemoryGiB") or None
            rows.setdefault(
                row["InstanceType"],
                (float(cpus) if cpus else None, float(mem) if mem else None),
            )
    return rows


def _fixture_vcpus_mem(instance_type: str, clouds: Any = None):
    cloud = clouds if isinstance(clouds, str) else (clouds or ["aws"])[0]
    return _catalog_rows(str(cloud).lower()).get(instance_type, (None, None))


# ----------------------------------------------------------------------------- the fake


class FakeRequest:
    def __init__(self, name: str, result: Any = None, error: BaseException | None = None):
        self.name = name
        self.result = result
        self.error = error
        self.status = "FAILED" if error is not None else "SUCCEEDED"


class FakeSky:
    """SkyPilot's API server as the SDK sees it: cluster records and request ids."""

    def __init__(self, sky) -> None:
        self.sky = sky
        self.clusters: dict[str, Any] = {}
        self.requests: dict[str, FakeRequest] = {}
        self.launches: list[tuple[Any, dict]] = []  # (task, kwargs) per sky.launch
        self.launch_ids: dict[str, str] = {}  # cluster name -> its latest launch request
        self.downs: list[str] = []
        self.cancelled: list[str] = []
        self.status_calls: list[dict] = []
        self.endpoint_url = "34.1.2.3:8000"
        self.launch_error: BaseException | None = None  # raised by sky.launch itself
        self.status_errors: list[BaseException] = []  # raised by the next sky.status calls
        self._ids = itertools.count(1)

    def _request(self, name: str, result: Any = None, error: BaseException | None = None):
        rid = f"{name}-{next(self._ids)}"
        self.requests[rid] = FakeRequest(name, result, error)
        return rid

    # -- the SDK functions ------------------------------------------------------------

    def launch(self, task, cluster_name=None, **kwargs):
        if self.launch_error is not None:
            raise self.launch_error
        self.launches.append((task, {"cluster_name": cluster_name, **kwargs}))
        rid = self._request("sky.launch", result=(1, None))
        self.launch_ids[cluster_name] = rid
        self.requests[rid].status = "RUNNING"  # provisioning until the test says otherwise
        return rid

    def status(self, cluster_names=None, refresh=None, all_users=False, **kwargs):
        self.status_calls.append({"cluster_names": cluster_names, "refresh": refresh})
        if self.status_errors:
            raise self.status_errors.pop(0)
        records = [
            r for n, r in self.clusters.items() if cluster_names is None or n in cluster_names
        ]
        return self._request("sky.status", result=records)

    def endpoints(self, cluster, port=None):
        record = self.clusters.get(cluster)
        if record is None or record["status"] != self.sky.ClusterStatus.UP:
            error = self.sky.exceptions.ClusterNotUpError(f"Cluster {cluster!r} is not UP.")
            return self._request("sky.endpoints", error=error)
        return self._request("sky.endpoints", result={str(port): self.endpoint_url})

    def down(self, cluster_name, purge=False, **kwargs):
        self.downs.append(cluster_name)
        if self.clusters.pop(cluster_name, None) is None:
            error = self.sky.exceptions.ClusterDoesNotExist(
                f"Cluster {cluster_name!r} does not exist."
            )
            return self._request("sky.down", error=error)
        return self._request("sky.down")

    def get(self, request_id):
        request = self.requests[request_id]
        assert request.status != "RUNNING", "sky.get would block on a running request"
        if request.error is not None:
            raise request.error
        return request.result

    def api_status(self, request_ids=None, **kwargs):
        return [self.requests[r] for r in request_ids or [] if r in self.requests]

    def api_cancel(self, request_ids=None, all_users=False, silent=False):
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids or [])
        for rid in ids:
            request = self.requests[rid]
            if request.status in ("PENDING", "RUNNING"):
                request.status = "CANCELLED"
                request.error = self.sky.exceptions.RequestCancelled("cancelled")
                self.cancelled.append(rid)
        return self._request("sky.api_cancel", result=ids)

    # -- what the cloud does ----------------------------------------------------------

    def record(self, name: str, status: str, **fields):
        from sky.schemas.api.responses import StatusResponse

        base = dict(
            name=name,
            launched_at=1_790_000_000,
            status=getattr(self.sky.ClusterStatus, status),
            autostop=10,
            to_down=True,
            cluster_hash="c0ffee",
            cluster_ever_up=status != "INIT",
            user_hash="u1",
            user_name="tester",
            workspace="default",
            is_managed=False,
            nodes=1,
            cloud="AWS",
            region="us-east-1",
        )
        self.clusters[name] = StatusResponse(**{**base, **fields})

    def launch_request(self, name: str) -> str:
        return self.launch_ids[name]

    def finish_launch(self, name: str, error: BaseException | None = None) -> None:
        request = self.requests[self.launch_request(name)]
        request.status = "FAILED" if error is not None else "SUCCEEDED"
        request.error = error


# ----------------------------------------------------------------------------- golden


def _golden_config(task) -> dict:
    """`task.to_yaml_config()` with the secret values and the shipped guard replaced by
    placeholders, after checking that they are the spec's own values."""
    config = task.to_yaml_config()
    envs = config.get("envs", {})
    for key in envs:
        if VOLATILE_ENV.fullmatch(key):
            envs[key] = "<guard>"
    secrets = config.get("secrets", {})
    for key in secrets:
        secrets[key] = "<secret>"
    return config


@pytest.mark.parametrize("case", sorted(GOLDEN_OFFERS))
def test_launch_builds_the_golden_task(case, fake, provider):
    """launch() builds a real sky.Task/sky.Resources; its YAML matches the golden file."""
    chosen = offer(GOLDEN_OFFERS[case])
    instance = provider.launch(chosen, GOLDEN_SPEC, name=NAME, labels={"deployctl": "abc123"})

    assert instance.state is InstanceState.PENDING
    assert instance.instance_id == NAME
    assert len(fake.launches) == 1
    task, _ = fake.launches[0]
    assert type(task).__module__ == "sky.task" and type(task).__name__ == "Task"
    raw = task.to_yaml_config()
    assert raw["secrets"] == {
        "DEPLOYCTL_ENDPOINT_KEY": "dk-secret-key",
        "HF_TOKEN": "hf_goldentoken1234",
    }
    assert raw["envs"]["DEPLOYCTL_GUARD_B64"] == "cHJpbnQoJ2d1YXJkJyk="
    config = _golden_config(task)
    text = yaml.safe_dump(config, sort_keys=True, width=100)
    path = GOLDEN_DIR / f"skypilot_task_{case}.yaml"
    if UPDATE_GOLDEN or not path.exists():
        if not UPDATE_GOLDEN:
            pytest.fail(f"{path} is missing: run with DEPLOYCTL_UPDATE_GOLDEN=1 to write it")
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    expected = yaml.safe_load(path.read_text(encoding="utf-8"))
    if config != expected:
        diff = "\n".join(
            difflib.unified_diff(
                path.read_text(encoding="utf-8").splitlines(),
                text.splitlines(),
                "golden",
                "built",
                lineterm="",
            )
        )
        pytest.fail(f"the built task differs from {path.name}:\n{diff}")


def test_resources_carry_the_offer(fake, provider):
    """The fields the issue names, read from the Resources object itself."""
    chosen = offer(GOLDEN_OFFERS["aws_l4_spot"])
    provider.launch(chosen, GOLDEN_SPEC, name=NAME, labels={})
    task, _ = fake.launches[0]
    (resources,) = list(task.resources)
    assert resources.accelerators == {"L4": 1}
    assert resources.use_spot is True
    assert resources.ports == ["8000"]
    assert resources.extract_docker_image() == "vllm/vllm-openai:v0.10.2"
    assert str(resources.cloud).lower() == "aws"
    assert resources.region == "us-east-1"
    assert resources.instance_type == "g6.xlarge"
    assert resources.disk_size == 60
    assert resources.autostop_config.down is True
    assert resources.autostop_config.idle_minutes == 1  # after the guard's job ends
    assert task.run == GOLDEN_BOOTSTRAP
    assert task.name == NAME


def test_launch_asks_for_autodown_and_returns_at_once(fake, provider):
    chosen = offer()
    instance = provider.launch(chosen, GOLDEN_SPEC, name=NAME, labels={"deployctl": "abc123"})
    _, kwargs = fake.launches[0]
    assert kwargs["cluster_name"] == NAME
    assert kwargs["idle_minutes_to_autostop"] == 1  # the guard enforces keep_alive itself
    assert kwargs["down"] is True
    assert kwargs["wait_for"].value == "jobs"
    assert kwargs.get("retry_until_up") is False
    # The request is still provisioning: launch did not wait for it (sky.get would block).
    assert fake.requests[fake.launch_request(NAME)].status == "RUNNING"
    assert instance.state is InstanceState.PENDING
    assert instance.labels == {"deployctl": "abc123"}
    assert instance.price_per_hour_usd == chosen.price_per_hour_usd
    assert instance.raw["request_id"] == fake.launch_request(NAME)


@pytest.mark.parametrize("keep_alive_s", [0, 20, 61, 900])
def test_autostop_is_one_minute_after_the_guard_job_ends(keep_alive_s):
    # The guard idles out at keep_alive and exits; autostop (wait_for=jobs) then only has
    # to notice that the job ended, whatever the keep_alive was.
    spec = GOLDEN_SPEC.model_copy(
        update={"env": {**GOLDEN_SPEC.env, "DEPLOYCTL_KEEP_ALIVE_S": str(keep_alive_s)}}
    )
    assert autostop_minutes(spec) == 1


def test_a_real_engine_spec_runs_its_bootstrap_with_secrets_apart(fake, provider):
    """With build_spec's output: run is the bootstrap verbatim, the guard travels in envs,
    the endpoint key and HF token in SkyPilot's redacted secrets, not in envs."""
    task_spec = TaskSpec(name="qwen", model="Qwen/Qwen2.5-0.5B-Instruct", keep_alive="5m")
    spec = build_spec(
        task_spec,
        gpu_count=1,
        endpoint_key="dk-123",
        keep_alive_s=300,
        ttl_s=3600,
        teardown=provider.teardown,
        hf_token="hf_realistic0000",
    )
    provider.launch(offer(), spec, name=NAME, labels={})
    task, kwargs = fake.launches[0]
    assert task.run == spec.bootstrap
    config = task.to_yaml_config()
    assert config["envs"] == spec.env  # the shipped guard included, byte for byte
    assert config["envs"]["DEPLOYCTL_TEARDOWN"] == "skypilot"
    assert "DEPLOYCTL_ENDPOINT_KEY" not in config["envs"]
    assert config["secrets"] == {"DEPLOYCTL_ENDPOINT_KEY": "dk-123", "HF_TOKEN": "hf_realistic0000"}
    redacted = task.to_yaml_config(use_user_specified_yaml=True)
    assert "dk-123" not in yaml.safe_dump(redacted)
    assert kwargs["idle_minutes_to_autostop"] == 1


# ----------------------------------------------------------------------------- get / list


def test_get_follows_the_launch_to_running(fake, provider):
    provider.launch(offer(), GOLDEN_SPEC, name=NAME, labels={})

    queued = provider.get(NAME)  # request submitted, no cluster record yet
    assert queued is not None and queued.state is InstanceState.PENDING

    fake.record(NAME, "INIT")
    booting = provider.get(NAME)
    assert booting.state is InstanceState.PENDING and booting.endpoint_url is None

    fake.record(NAME, "UP")
    fake.finish_launch(NAME)
    running = provider.get(NAME)
    assert running.state is InstanceState.RUNNING
    assert running.endpoint_url == "http://34.1.2.3:8000"
    assert running.labels == {"deployctl": "abc123"}
    assert running.started_at is not None and running.started_at.year == 2026
    assert running.price_per_hour_usd == offer().price_per_hour_usd


def test_get_maps_cluster_states(fake, provider):
    assert provider.get("deployctl-nothere") is None

    fake.record("deployctl-init", "INIT", init_status_reason="Launching on AWS us-east-1")
    init = provider.get("deployctl-init")
    assert init.state is InstanceState.PENDING
    assert "Launching" in init.message

    fake.record("deployctl-up", "UP")
    fake.endpoint_url = "https://abc.example.net/"
    up = provider.get("deployctl-up")
    assert up.state is InstanceState.RUNNING
    assert up.endpoint_url == "https://abc.example.net"

    fake.record("deployctl-stopped", "STOPPED")
    assert provider.get("deployctl-stopped").state is InstanceState.EXITED
    fake.record("deployctl-autostopping", "AUTOSTOPPING")
    assert provider.get("deployctl-autostopping").state is InstanceState.EXITED

    # get() after a launch of another process refreshes statuses from the cloud
    assert fake.status_calls[-1]["refresh"] == fake.sky.StatusRefreshMode.AUTO


def test_up_without_an_open_port_is_still_pending(fake, provider):
    fake.record(NAME, "UP")
    fake.endpoint_url = ""
    instance = provider.get(NAME)
    assert instance.state is InstanceState.PENDING


def test_list_instances_filters_on_the_label_prefix(fake, provider):
    fake.record("deployctl-a1", "UP")
    fake.record("deployctl-b2", "INIT")
    fake.record("someone-elses", "UP")
    listed = provider.list_instances("deployctl-")
    assert sorted(i.instance_id for i in listed) == ["deployctl-a1", "deployctl-b2"]
    states = {i.instance_id: i.state for i in listed}
    assert states == {"deployctl-a1": InstanceState.RUNNING, "deployctl-b2": InstanceState.PENDING}
    assert {i.labels["deployctl"] for i in listed} == {"a1", "b2"}
    assert fake.status_calls[-1]["cluster_names"] is None


# ----------------------------------------------------------------------------- terminate


def test_terminate_downs_and_is_idempotent(fake, provider):
    fake.record(NAME, "UP")
    provider.terminate(NAME)
    assert fake.downs == [NAME]
    assert provider.get(NAME) is None
    provider.terminate(NAME)  # ClusterDoesNotExist: success
    assert fake.downs == [NAME, NAME]
    assert provider.list_instances() == []


def test_terminate_during_launch_cancels_the_request_first(fake, provider):
    provider.launch(offer(), GOLDEN_SPEC, name=NAME, labels={})
    fake.record(NAME, "INIT")
    provider.terminate(NAME)
    assert fake.cancelled == [fake.launch_request(NAME)]
    assert fake.downs == [NAME]
    assert provider.get(NAME) is None


def test_terminate_translates_other_failures(fake, provider, monkeypatch):
    def broken(cluster_name, **kwargs):
        raise RuntimeError("Failed to tear down the cluster: quota API said no")

    monkeypatch.setattr(fake.sky, "down", broken)
    with pytest.raises(ProviderError, match="tear down"):
        provider.terminate(NAME)


# ----------------------------------------------------------------------------- errors


def test_unavailable_at_submit_is_offer_unavailable(fake, provider):
    fake.launch_error = fake.sky.exceptions.ResourcesUnavailableError(
        "Failed to acquire resources in all zones in us-east-1 for {AWS(g6.xlarge, {'L4': 1})}."
    )
    with pytest.raises(OfferUnavailableError, match="acquire resources"):
        provider.launch(offer(), GOLDEN_SPEC, name=NAME, labels={})


def test_unavailable_while_provisioning_exits_with_the_reason(fake, provider):
    provider.launch(offer(), GOLDEN_SPEC, name=NAME, labels={})
    fake.record(NAME, "INIT")
    fake.finish_launch(
        NAME, fake.sky.exceptions.ResourcesUnavailableError("Failed to provision all zones.")
    )
    instance = provider.get(NAME)
    assert instance.state is InstanceState.EXITED
    assert "no capacity" in instance.message and "Failed to provision" in instance.message
    provider.terminate(NAME)
    assert fake.cancelled == []  # the request had finished
    assert provider.get(NAME) is None


def test_failed_launch_without_a_record_is_exited_until_terminated(fake, provider):
    provider.launch(offer(), GOLDEN_SPEC, name=NAME, labels={})
    fake.finish_launch(NAME, ValueError("Invalid cluster name"))
    assert provider.get(NAME).state is InstanceState.EXITED
    provider.terminate(NAME)  # the cluster never existed: success
    assert provider.get(NAME) is None


def test_failure_messages_lose_colours_and_repeated_prefixes(fake, provider):
    provider.launch(offer(), GOLDEN_SPEC, name=NAME, labels={})
    fake.finish_launch(
        NAME,
        fake.sky.exceptions.NoCloudAccessError(
            "Cloud access is not set up. Run: \x1b[1msky check\x1b[0m"
        ),
    )
    instance = provider.get(NAME)
    assert instance.state is InstanceState.EXITED
    assert instance.message == (
        f"launch failed: launching {NAME}: Cloud access is not set up. Run: sky check"
    )


def test_fields_skypilot_rejects_fail_before_anything_is_submitted(fake, provider):
    bad = offer().model_copy(update={"cloud": "no-such-cloud"})
    with pytest.raises(ProviderError) as info:
        provider.launch(bad, GOLDEN_SPEC, name=NAME, labels={})
    assert not isinstance(info.value, LaunchFailedError)
    assert fake.launches == []


def test_other_submit_errors_carry_the_cluster_name(fake, provider):
    fake.launch_error = RuntimeError("boom")
    with pytest.raises(LaunchFailedError) as info:
        provider.launch(offer(), GOLDEN_SPEC, name=NAME, labels={})
    assert info.value.instance_id == NAME


def test_no_cloud_access_is_a_credentials_error(fake, provider):
    fake.launch_error = fake.sky.exceptions.NoCloudAccessError("No cloud is enabled.")
    with pytest.raises(CredentialsError):
        provider.launch(offer(), GOLDEN_SPEC, name=NAME, labels={})


def test_api_server_connection_errors_are_retried_then_retryable(fake, provider):
    error = fake.sky.exceptions.ApiServerConnectionError("http://127.0.0.1:46580")
    fake.record(NAME, "INIT")
    fake.status_errors = [error]
    assert provider.get(NAME).state is InstanceState.PENDING  # one failure, retried
    fake.status_errors = [error] * 5
    with pytest.raises(ProviderUnavailableError):
        provider.list_instances()


# ----------------------------------------------------------------------------- import cost


def test_listing_and_credentials_never_import_sky():
    """`import sky` takes seconds and pins click: only lifecycle calls may import it."""
    code = f"""
import sys
import providers.skypilot as sp
from orchestrator.models import OfferQuery
assert "sky" not in sys.modules, "import providers.skypilot imported sky"
p = sp.SkyPilotProvider(catalog_dir={str(CATALOG_DIR)!r})
status = p.check_credentials()
assert status.ok, status
assert p.list_offers(OfferQuery(gpus=["L4"]))
leaked = sorted(m for m in sys.modules if m == "sky" or m.startswith("sky."))
assert not leaked, leaked
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
