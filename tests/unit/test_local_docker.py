"""The local provider's Docker mode (GPU offers as vLLM containers behind the guard).

Unit tests run a fake `docker` CLI and a fake `nvidia-smi` (tests/fakes/bin, first on
PATH): the fake records every call's argv and keeps containers in a JSON state file.
The last test runs the real thing where a Docker engine and an NVIDIA GPU exist.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engines import build_spec
from orchestrator.errors import LaunchFailedError, ProviderUnavailableError
from orchestrator.models import InstanceState, OfferQuery, TaskSpec
from orchestrator.taskfile import load_task
from providers.local import LocalProvider
from providers.local_docker import DockerCli, instance_from_inspect
from providers.local_process import registry_dir

FAKES_BIN = Path(__file__).resolve().parents[1] / "fakes" / "bin"
KEY = "sk-endpoint-secret-0123456789"
HF = "hf_secret_token_abcdefghijklmnop"
NAME = "deployctl-abc123"


class FakeHost:
    """The fake docker's state and call log."""

    def __init__(self, tmp_path: Path) -> None:
        self.state_file = tmp_path / "docker-state.json"
        self.log_file = tmp_path / "docker-calls.jsonl"

    def calls(self, command: str | None = None) -> list[list[str]]:
        if not self.log_file.exists():
            return []
        calls = [json.loads(line) for line in self.log_file.read_text().splitlines()]
        return [c for c in calls if command is None or (c and c[0] == command)]

    def state(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {"daemon": "up", "containers": {}}
        return json.loads(self.state_file.read_text())

    def update(self, **changes: Any) -> None:
        state = self.state()
        state.update(changes)
        self.state_file.write_text(json.dumps(state))

    def container(self, name: str) -> dict[str, Any]:
        return self.state()["containers"][name]

    def set_container(self, name: str, **changes: Any) -> None:
        state = self.state()
        state["containers"][name].update(changes)
        self.state_file.write_text(json.dumps(state))

    def add_foreign(self, name: str, labels: dict[str, str]) -> None:
        """A container deployctl did not start (no deployctl.name label unless given)."""
        state = self.state()
        state["containers"][name] = {
            "id": "f" * 64, "name": name, "image": "nginx", "state": "running",
            "labels": labels, "ports": {}, "env": {}, "created": "2025-01-02T03:04:05Z",
        }  # fmt: skip
        self.state_file.write_text(json.dumps(state))


@pytest.fixture
def host(tmp_path, monkeypatch) -> FakeHost:
    fake = FakeHost(tmp_path)
    monkeypatch.setenv("PATH", f"{FAKES_BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(fake.state_file))
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(fake.log_file))
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
    for var in (
        "HF_HOME",
        "DEPLOYCTL_LOCAL_DOCKER",
        "FAKE_NVIDIA_SMI_OUTPUT",
        "FAKE_NVIDIA_SMI_RC",
    ):
        monkeypatch.delenv(var, raising=False)
    return fake


def _gpu_offer(provider: LocalProvider):
    (offer,) = provider.list_offers(OfferQuery())
    assert offer.gpu != "CPU"
    return offer


def _spec(provider: LocalProvider, task: str = "qwen2.5-7b", **overrides: Any):
    t = load_task(task, overrides)
    return build_spec(t, gpu_count=1, endpoint_key=KEY, keep_alive_s=600, ttl_s=3600,
                      teardown=provider.teardown, hf_token=HF,
                      command=provider.engine_command(t, 1))  # fmt: skip


def _launch(provider: LocalProvider, name: str = NAME, **spec_overrides: Any):
    spec = _spec(provider, **spec_overrides)
    return spec, provider.launch(
        _gpu_offer(provider), spec, name=name, labels={"deployctl": name.removeprefix("deployctl-")}
    )


def _env_leftovers() -> list[Path]:
    return list(registry_dir().glob(".docker-env-*"))


# ------------------------------------------------------------------------ offers


def test_lists_the_rtx4090_and_never_asks_docker_to_list(host):
    provider = LocalProvider()
    (offer,) = provider.list_offers(OfferQuery())
    assert (offer.gpu, offer.gpu_count, offer.price_per_hour_usd) == ("RTX4090", 1, 0.0)
    assert offer.vram_gib == pytest.approx(24564 / 1024, abs=0.01)
    assert host.calls() == []  # offers never touch docker


def test_docker_mode_needs_gpus_and_an_engine_and_is_probed_once(host, monkeypatch):
    provider = LocalProvider()
    assert provider.docker_mode() and provider.docker_mode()
    assert provider.engine_command(load_task("qwen2.5-7b"), 1) is None  # the real engine
    assert host.calls() == [["info", "--format", "{{.ServerVersion}}"]]

    host.update(daemon="down")
    assert not LocalProvider().docker_mode()

    monkeypatch.setenv("FAKE_NVIDIA_SMI_OUTPUT", "")  # no GPU: CPU offer, docker not asked
    calls = len(host.calls())
    cpu = LocalProvider()
    assert [o.gpu for o in cpu.list_offers(OfferQuery())] == ["CPU"]
    assert not cpu.docker_mode()
    assert len(host.calls()) == calls

    monkeypatch.delenv("FAKE_NVIDIA_SMI_OUTPUT")
    host.update(daemon="up")
    monkeypatch.setenv("DEPLOYCTL_LOCAL_DOCKER", "0")
    assert not LocalProvider().docker_mode()


def test_without_a_docker_binary_nothing_is_run(host, tmp_path):
    provider = LocalProvider(docker=DockerCli(str(tmp_path / "no-such-docker")))
    assert not provider.docker_mode()
    assert provider.get(NAME) is None
    assert provider.list_instances() == []
    provider.terminate(NAME)


# ------------------------------------------------------------------------ launch


def test_launch_runs_exactly_this_container_and_keeps_secrets_out_of_argv(host, tmp_path):
    provider = LocalProvider()
    spec, inst = _launch(provider)
    assert inst.instance_id == NAME and inst.state is InstanceState.PENDING
    port = inst.raw["host_port"]
    assert inst.endpoint_url == f"http://127.0.0.1:{port}"

    (run,) = host.calls("run")
    env_file = run[run.index("--env-file") + 1]
    hf_cache = tmp_path / "home" / ".cache" / "huggingface"
    assert run == [
        "run", "-d", "--rm", "--init", "--name", NAME,
        "--label", "deployctl=abc123", "--label", f"deployctl.name={NAME}",
        "--gpus", "all",
        "-p", f"127.0.0.1:{port}:8000",
        "--shm-size", "8g",
        "-v", f"{hf_cache}:/root/.cache/huggingface",
        "--env-file", env_file,
        "--entrypoint", "sh",
        "vllm/vllm-openai:v0.10.2",
        "-c", spec.bootstrap,
    ]  # fmt: skip
    assert hf_cache.is_dir()
    # the real vLLM command behind the guard (no local engine_command override)
    assert "vllm.entrypoints.openai.api_server" in spec.bootstrap
    assert "--tensor-parallel-size 1" in spec.bootstrap
    assert 'guard.py" --host' in spec.bootstrap

    # secrets went through a 0600 file in the private dir, which is gone now
    assert Path(env_file).parent == registry_dir()
    assert not Path(env_file).exists() and _env_leftovers() == []
    container = host.container(NAME)
    assert container["env_file_modes"] == ["0o600"]
    assert container["env"] == spec.all_env()
    assert container["env"]["DEPLOYCTL_ENDPOINT_KEY"] == KEY
    assert container["env"]["HF_TOKEN"] == HF
    assert container["env"]["DEPLOYCTL_TEARDOWN"] == "local"
    everything_run = json.dumps(host.calls())
    assert KEY not in everything_run and HF not in everything_run
    assert "DEPLOYCTL_GUARD_00" not in everything_run  # no env values in argv at all


def test_launch_retries_a_port_taken_between_probe_and_bind(host):
    host.update(
        fail_next_run="driver failed programming external connectivity on endpoint "
        "x: Bind for 127.0.0.1:40000 failed: port is already allocated"
    )
    provider = LocalProvider()
    _, inst = _launch(provider)
    runs = host.calls("run")
    assert len(runs) == 2
    assert ["rm", "-f", host.container(NAME)["id"]] not in host.calls("rm")
    assert any(c[:2] == ["rm", "-f"] for c in host.calls("rm"))  # the half-started one
    assert provider.get(NAME).state is InstanceState.RUNNING
    assert inst.raw["host_port"] == int(host.container(NAME)["ports"]["8000/tcp"][0]["HostPort"])
    assert _env_leftovers() == []


def test_launch_failure_leaves_no_container_and_no_env_file(host):
    host.update(fail_next_run='could not select device driver "" with capabilities: [[gpu]]')
    provider = LocalProvider()
    with pytest.raises(LaunchFailedError, match="could not select device driver") as err:
        _launch(provider)
    assert err.value.instance_id is None  # nothing left for the launcher to destroy
    assert host.state()["containers"] == {}
    assert _env_leftovers() == []


def test_launch_never_touches_a_container_that_already_has_the_name(host):
    host.add_foreign(NAME, {"owner": "someone"})
    provider = LocalProvider()
    with pytest.raises(LaunchFailedError, match="already in use"):
        _launch(provider)
    assert host.container(NAME)["image"] == "nginx"
    assert host.calls("rm") == []


def test_values_the_env_file_cannot_carry_go_by_name_never_in_argv(host):
    provider = LocalProvider()
    odd = {"MULTI": "two\nlines", "QUOTED": '"kept quotes"', "SINGLE": "'x'", "PLAIN": "a=b "}
    _launch(provider, env=odd)
    (run,) = host.calls("run")
    by_name = [run[i + 1] for i, arg in enumerate(run) if arg == "-e"]
    assert sorted(by_name) == ["MULTI", "QUOTED", "SINGLE"]  # PLAIN is fine in the file
    env = host.container(NAME)["env"]
    assert {k: env[k] for k in odd} == odd
    assert "two\nlines" not in json.dumps(run) and "kept quotes" not in json.dumps(run)
    assert _env_leftovers() == []


def test_launch_refuses_a_nul_in_a_value(host):
    provider = LocalProvider()
    with pytest.raises(LaunchFailedError, match="FOO"):
        _launch(provider, env={"FOO": "a\0b"})
    assert host.calls("run") == [] and _env_leftovers() == []


def test_cpu_offers_keep_the_process_path(host, monkeypatch):
    monkeypatch.setenv("FAKE_NVIDIA_SMI_OUTPUT", "")
    provider = LocalProvider()
    (offer,) = provider.list_offers(OfferQuery())
    assert offer.gpu == "CPU" and not provider.docker_mode()
    spec = build_spec(
        TaskSpec(name="t", model="x/y"),
        gpu_count=1,
        endpoint_key=KEY,
        keep_alive_s=60,
        ttl_s=60,
        teardown="local",
        command=["true"],
    )
    inst = provider.launch(offer, spec, name="deployctl-cpu1", labels={"deployctl": "cpu1"})
    try:
        assert inst.raw["pid"] > 0
        assert host.calls("run") == []
    finally:
        provider.terminate(inst.instance_id)


# ------------------------------------------------------------- get / list / terminate


@pytest.mark.parametrize(
    ("status", "expected", "endpoint"),
    [
        ("running", InstanceState.RUNNING, True),
        ("created", InstanceState.PENDING, False),
        ("restarting", InstanceState.PENDING, False),
        ("exited", InstanceState.EXITED, False),
        ("dead", InstanceState.EXITED, False),
        ("paused", InstanceState.EXITED, False),
    ],
)
def test_get_maps_docker_states(host, status, expected, endpoint):
    provider = LocalProvider()
    _, inst = _launch(provider)
    host.set_container(NAME, state=status, exit_code=137, oom=True)
    got = provider.get(NAME)
    assert got is not None and got.state is expected
    assert got.instance_id == NAME and got.provider == "local"
    assert (
        got.labels["deployctl"] == "abc123" and "org.opencontainers.image.vendor" not in got.labels
    )
    if endpoint:
        assert got.endpoint_url == inst.endpoint_url
    else:
        assert got.endpoint_url is None
    if expected is InstanceState.EXITED:
        assert "137" in got.message and "out of memory" in got.message


def test_get_is_none_for_missing_and_foreign_containers_and_raises_when_docker_fails(host):
    provider = LocalProvider()
    assert provider.get("deployctl-never-existed") is None
    host.add_foreign("deployctl-foreign", {"owner": "someone"})
    assert provider.get("deployctl-foreign") is None
    _launch(provider)
    host.update(daemon="down")  # probed up before: a failure now is an error, not "gone"
    with pytest.raises(ProviderUnavailableError):
        provider.get(NAME)


def test_list_instances_filters_by_label_and_name_prefix(host):
    provider = LocalProvider()
    _launch(provider, "deployctl-aaa")
    _launch(provider, "deployctl-bbb")
    host.set_container("deployctl-bbb", state="exited")  # still there: still listed
    host.add_foreign("deployctl-foreign", {"owner": "someone"})  # no deployctl.name label
    host.add_foreign("other-ccc", {"deployctl.name": "other-ccc"})
    listed = {i.instance_id: i.state for i in provider.list_instances("deployctl-")}
    assert listed == {"deployctl-aaa": InstanceState.RUNNING, "deployctl-bbb": InstanceState.EXITED}
    assert provider.list_instances("somebody-else-") == []
    ps = host.calls("ps")[0]
    assert ps[:2] == ["ps", "-a"] and "label=deployctl.name" in ps


def test_terminate_removes_verifies_and_is_idempotent(host):
    provider = LocalProvider()
    _launch(provider)
    cid = host.container(NAME)["id"]
    provider.terminate(NAME)
    assert ["rm", "-f", cid] in host.calls("rm")
    assert provider.get(NAME) is None
    assert NAME not in {i.instance_id for i in provider.list_instances()}
    provider.terminate(NAME)  # gone is success
    provider.terminate("deployctl-never-existed")
    assert len(host.calls("rm")) == 1


def test_terminate_leaves_other_peoples_containers_alone(host):
    host.add_foreign("deployctl-foreign", {"owner": "someone"})
    LocalProvider().terminate("deployctl-foreign")
    assert host.calls("rm") == []
    assert "deployctl-foreign" in host.state()["containers"]


def test_terminate_treats_a_vanishing_container_as_gone(host, tmp_path):
    """`docker rm -f` racing --rm: "no such container" and "already in progress" are success."""
    script = tmp_path / "docker"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  info) echo 28.0.0 ;;\n"
        '  inspect) echo \'[{"Id": "abc", "Name": "/deployctl-x", "State": {"Status": '
        '"exited"}, "Config": {"Labels": {"deployctl.name": "deployctl-x"}}}]\' ;;\n'
        "  rm) echo 'Error response from daemon: removal of container abc is already in "
        "progress' >&2; exit 1 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    LocalProvider(docker=DockerCli(str(script))).terminate("deployctl-x")


def test_inspect_parsing_of_times_and_ports():
    data = {
        "Id": "c0ffee",
        "Name": "/deployctl-t",
        "Created": "2025-03-04T05:06:07.123456789Z",
        "State": {"Status": "running", "StartedAt": "2025-03-04T05:06:08.5Z"},
        "Config": {
            "Image": "vllm/vllm-openai:v0.10.2",
            "Labels": {"deployctl": "t", "deployctl.name": "deployctl-t"},
        },
        "NetworkSettings": {"Ports": {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "41234"}]}},
    }
    inst = instance_from_inspect(data)
    assert inst is not None
    assert inst.endpoint_url == "http://127.0.0.1:41234"
    assert inst.started_at.isoformat() == "2025-03-04T05:06:08.500000+00:00"
    data["State"] = {"Status": "created", "StartedAt": "0001-01-01T00:00:00Z"}
    data["NetworkSettings"] = {"Ports": {}}
    data["HostConfig"] = {
        "PortBindings": {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "41234"}]}
    }
    inst = instance_from_inspect(data)
    assert inst.state is InstanceState.PENDING and inst.endpoint_url is None
    assert inst.raw["host_port"] == 41234
    assert inst.started_at.isoformat() == "2025-03-04T05:06:07.123456+00:00"
    assert instance_from_inspect({"Config": {"Labels": {}}}) is None


# -------------------------------------------------------------- the real thing


def _real_docker_gpu_missing() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi on this machine (Docker mode needs an NVIDIA GPU)"
    docker = shutil.which("docker")
    if docker is None:
        return "no docker command on this machine"
    try:
        done = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`docker info` failed ({exc})"
    if done.returncode != 0:
        return f"no Docker engine answers `docker info` ({done.stderr.strip()[:120]})"
    return None


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_real_docker_vllm_launch_ready_terminate(monkeypatch):
    """launch -> running -> guard + vLLM answer -> terminate -> gone, on this machine's GPU.

    Needs the vLLM image (pulled on first use) and the model from the Hub (or already in
    ~/.cache/huggingface): DEPLOYCTL_TEST_DOCKER_MODEL picks another small model.
    """
    reason = _real_docker_gpu_missing()
    if reason:
        pytest.skip(reason)
    import time

    import httpx

    from orchestrator.health import wait_ready

    real_home = Path(os.path.expanduser(f"~{os.environ.get('USER', '')}"))
    if "HF_HOME" not in os.environ and real_home.is_dir():
        monkeypatch.setenv("HF_HOME", str(real_home / ".cache" / "huggingface"))
    provider = LocalProvider()
    offers = [o for o in provider.list_offers(OfferQuery()) if o.gpu != "CPU"]
    if not offers:
        pytest.skip(f"nvidia-smi lists no GPU deployctl knows ({provider.unknown_gpu_names})")
    assert provider.docker_mode()
    task = TaskSpec(
        name="tiny-vllm",
        model=os.environ.get("DEPLOYCTL_TEST_DOCKER_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        engine="vllm",
        context_tokens=2048,
    )
    spec = build_spec(task, gpu_count=1, endpoint_key=KEY, keep_alive_s=900, ttl_s=3600,
                      teardown=provider.teardown, hf_token=os.environ.get("HF_TOKEN"),
                      command=provider.engine_command(task, 1))  # fmt: skip
    name = f"deployctl-dockertest{os.getpid()}"
    inst = provider.launch(offers[0], spec, name=name, labels={"deployctl": name[10:]})
    try:
        deadline = time.monotonic() + 600
        while (got := provider.get(name)) is None or got.state is not InstanceState.RUNNING:
            assert got is not None and got.state is not InstanceState.EXITED, got
            assert time.monotonic() < deadline, "never running"
            time.sleep(1)
        assert got.endpoint_url == inst.endpoint_url
        assert name in {i.instance_id for i in provider.list_instances("deployctl-")}

        def still_running() -> bool:
            now = provider.get(name)
            return now is not None and now.state is InstanceState.RUNNING

        wait_ready(got.endpoint_url, KEY, spec.model_name, timeout_s=1500, poll_s=2,
                   still_running=still_running)  # fmt: skip
        r = httpx.get(f"{got.endpoint_url}/v1/models", timeout=10)
        assert r.status_code == 401  # the guard is in front
    finally:
        provider.terminate(name)
    assert provider.get(name) is None
    assert name not in {i.instance_id for i in provider.list_instances("deployctl-")}
    provider.terminate(name)
