"""Local GPU instances as Docker containers: the guard and the task's own engine image.

The local provider uses this when `nvidia-smi` reports GPUs and `docker info` answers
(DESIGN §3, "local"). One instance is one container, named after the deployment label:

    docker run -d --rm --init --name <label> --label deployctl=<id> \
        --label deployctl.name=<label> --gpus all -p 127.0.0.1:<free port>:8000 \
        --shm-size 8g -v <HF cache>:/root/.cache/huggingface --env-file <0600 file> \
        --entrypoint sh <image> -c <bootstrap>

The whole environment (the guard chunks, the endpoint key, the HF token) goes through an
`--env-file` written 0600 in the private data dir and deleted as soon as `docker run`
returns, so no value ever shows in `ps`; the rare value that file cannot carry verbatim
(a line break, surrounding quotes) goes as `-e NAME`, its value in the docker command's
own environment, never in its argv. The guard listens on 8000 inside the container,
published on loopback only; at keep-alive or ttl it stops the engine and exits (teardown
"local"), and `--rm` removes the container. Docker itself is the registry: `get` is
`docker inspect`, `list` is `docker ps` on the `deployctl.name` label, `terminate` is
`docker rm -f` (a container that is already gone is success).

Every subprocess call lives in `DockerCli`, whose executable is injectable (tests put a
fake `docker` first on PATH or pass its path).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator.errors import (
    LaunchFailedError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from orchestrator.models import ContainerSpec, Instance, InstanceState, Offer
from orchestrator.paths import private_dir

from .local_process import free_port, registry_dir

__all__ = [
    "NAME_LABEL",
    "DockerCli",
    "LocalDocker",
    "docker_run_args",
    "hf_cache_dir",
    "instance_from_inspect",
    "write_env_file",
]

PROVIDER = "local"
NAME_LABEL = "deployctl.name"  # every container we start carries it: ps filters on it
CONTAINER_HF_CACHE = "/root/.cache/huggingface"
SHM_SIZE = "8g"

_INFO_TIMEOUT_S = 5.0
_CALL_TIMEOUT_S = 60.0
_RUN_TIMEOUT_S = 1800.0  # `docker run` pulls a missing image first (vLLM's is ~10 GB)
_PORT_TRIES = 3

_STATES = {
    "running": InstanceState.RUNNING,
    "created": InstanceState.PENDING,
    "restarting": InstanceState.PENDING,
    "paused": InstanceState.EXITED,  # not serving; must be destroyed
    "exited": InstanceState.EXITED,
    "dead": InstanceState.EXITED,
    "removing": InstanceState.GONE,
}
_NO_SUCH = re.compile(r"(?i)no such (container|object)")
_GONE_ALREADY = re.compile(r"(?i)removal of container .* is already in progress")
_PORT_TAKEN = re.compile(r"(?i)port is already allocated|address already in use")
_NAME_TAKEN = re.compile(r"(?i)conflict.*already in use")


class DockerCli:
    """The `docker` command line: the only place that runs it."""

    def __init__(
        self,
        executable: str | None = None,
        *,
        info_timeout_s: float = _INFO_TIMEOUT_S,
        timeout_s: float = _CALL_TIMEOUT_S,
        run_timeout_s: float = _RUN_TIMEOUT_S,
    ) -> None:
        self._executable = executable
        self.info_timeout_s = info_timeout_s
        self.timeout_s = timeout_s
        self.run_timeout_s = run_timeout_s
        self._available: bool | None = None

    @property
    def executable(self) -> str | None:
        """The docker binary: the injected path, else `docker` on PATH (None: not installed)."""
        if self._executable is None:
            self._executable = shutil.which("docker") or ""
        return self._executable or None

    def available(self) -> bool:
        """Whether a Docker engine answers `docker info` (asked once, then cached)."""
        if self._available is None:
            self._available = False
            if self.executable is not None:
                try:
                    done = self._call(
                        ["info", "--format", "{{.ServerVersion}}"], timeout_s=self.info_timeout_s
                    )
                except ProviderError:
                    pass
                else:
                    self._available = done.returncode == 0 and bool(done.stdout.strip())
        return self._available

    # ----------------------------------------------------------------- commands

    def run(self, args: list[str], env: Mapping[str, str] | None = None) -> str:
        """`docker run <args>` (detached): the new container's id. `env` is added to the
        docker command's own environment (values that `-e NAME` passes by name)."""
        done = self._call(["run", *args], timeout_s=self.run_timeout_s, env=env)
        if done.returncode != 0:
            raise _DockerFailed(_last_line(done.stderr) or f"docker run exited {done.returncode}")
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    def inspect(self, *names: str) -> list[dict[str, Any]]:
        """`docker inspect` of containers; the ones that do not exist are left out."""
        if not names:
            return []
        done = self._call(["inspect", "--type", "container", *names])
        try:
            found = json.loads(done.stdout) if done.stdout.strip() else []
        except ValueError:
            found = None
        if not isinstance(found, list):
            found = None
        if done.returncode != 0 and not _only_missing(done.stderr):
            raise ProviderUnavailableError(PROVIDER, f"docker inspect: {_last_line(done.stderr)}")
        if found is None:
            raise ProviderUnavailableError(PROVIDER, "docker inspect printed no JSON list")
        return [c for c in found if isinstance(c, dict)]

    def names(self, label: str = NAME_LABEL) -> list[str]:
        """Names of every container (running or not) that carries `label`."""
        done = self._call(["ps", "-a", "--no-trunc", "--filter", f"label={label}",
                           "--format", "{{json .}}"])  # fmt: skip
        if done.returncode != 0:
            raise ProviderUnavailableError(PROVIDER, f"docker ps: {_last_line(done.stderr)}")
        names = []
        for line in done.stdout.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                names += [n for n in str(row.get("Names") or "").split(",") if n]
        return names

    def remove(self, container: str) -> None:
        """`docker rm -f`: kills and removes; a container that is gone already is success."""
        done = self._call(["rm", "-f", container])
        if done.returncode != 0 and not (
            _NO_SUCH.search(done.stderr) or _GONE_ALREADY.search(done.stderr)
        ):
            raise ProviderUnavailableError(PROVIDER, f"docker rm: {_last_line(done.stderr)}")

    def _call(
        self,
        args: list[str],
        *,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        exe = self.executable
        if exe is None:
            raise ProviderUnavailableError(PROVIDER, "the docker command is not installed")
        try:
            return subprocess.run(
                [exe, *args],
                capture_output=True,
                text=True,
                timeout=timeout_s or self.timeout_s,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env} if env else None,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ProviderTimeoutError(
                PROVIDER, f"docker {args[0]} gave no answer within {exc.timeout:.0f} s"
            ) from None
        except OSError as exc:
            raise ProviderUnavailableError(PROVIDER, f"cannot run docker ({exc})") from None


class _DockerFailed(Exception):
    """`docker run` refused (its message, one line)."""


def _only_missing(stderr: str) -> bool:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return bool(lines) and all(_NO_SUCH.search(ln) for ln in lines)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------- pure parts


def hf_cache_dir() -> Path:
    """The host's Hugging Face cache ($HF_HOME, else ~/.cache/huggingface)."""
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()


def docker_run_args(
    spec: ContainerSpec,
    *,
    name: str,
    labels: Mapping[str, str],
    host_port: int,
    env_file: str,
    hf_cache: str,
    env_by_name: Iterable[str] = (),
) -> list[str]:
    """The arguments after `docker run` for one guarded GPU container: no env values,
    only the env file and the names of the variables passed by name."""
    args = ["-d", "--rm", "--init", "--name", name]
    for key, value in {**labels, NAME_LABEL: name}.items():
        args += ["--label", f"{key}={value}"]
    args += [
        "--gpus", "all",
        "-p", f"127.0.0.1:{host_port}:{spec.guard_port}",
        "--shm-size", SHM_SIZE,
        "-v", f"{hf_cache}:{CONTAINER_HF_CACHE}",
        "--env-file", env_file,
        *[arg for key in env_by_name for arg in ("-e", key)],
        "--entrypoint", "sh",
        spec.image,
        "-c", spec.bootstrap,
    ]  # fmt: skip
    return args


def write_env_file(path: Path, env: Mapping[str, str]) -> dict[str, str]:
    """Write `KEY=VALUE` lines for `docker run --env-file` (created 0600) and return the
    variables it cannot carry verbatim, to pass as `-e KEY` with the value in the docker
    command's own environment: values with line breaks (the file is line-based) and
    values wrapped in matching quotes (docker CLI 28+ strips them, older ones do not).
    A NUL cannot be in any environment: ValueError."""
    lines, by_name = [], {}
    for key, value in env.items():
        if "\0" in value:
            raise ValueError(f"the value of {key} contains a NUL character")
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        if quoted or "\n" in value or "\r" in value:
            by_name[key] = value
        else:
            lines.append(f"{key}={value}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    return by_name


def instance_from_inspect(data: Mapping[str, Any]) -> Instance | None:
    """The Instance for one `docker inspect` object; None when it is not one of ours."""
    config = data.get("Config") or {}
    labels = config.get("Labels") or {}
    if NAME_LABEL not in labels:
        return None
    state = data.get("State") or {}
    status = str(state.get("Status") or "").lower()
    mapped = _STATES.get(status, InstanceState.PENDING)
    port = _host_port(data)
    message = status
    if mapped is InstanceState.EXITED:
        message = f"{status} (exit code {state.get('ExitCode', '?')})"
        if state.get("OOMKilled"):
            message += ", out of memory"
        if state.get("Error"):
            message += f": {state['Error']}"
    return Instance(
        provider=PROVIDER,
        instance_id=str(data.get("Name") or labels[NAME_LABEL]).lstrip("/"),
        state=mapped,
        endpoint_url=(
            f"http://127.0.0.1:{port}" if mapped is InstanceState.RUNNING and port else None
        ),
        price_per_hour_usd=0.0,
        started_at=_docker_time(state.get("StartedAt")) or _docker_time(data.get("Created")),
        labels={k: v for k, v in labels.items() if k == "deployctl" or k.startswith("deployctl.")},
        message=message,
        raw={
            "container_id": data.get("Id"),
            "image": config.get("Image"),
            "status": status,
            "host_port": port,
        },
    )


def _host_port(data: Mapping[str, Any], container_port: str = "8000/tcp") -> int | None:
    """The loopback port published for the guard: live bindings first, then the request."""
    for section, key in (("NetworkSettings", "Ports"), ("HostConfig", "PortBindings")):
        bindings = ((data.get(section) or {}).get(key) or {}).get(container_port) or []
        for binding in bindings:
            with contextlib.suppress(TypeError, ValueError):
                return int(binding.get("HostPort"))
    return None


def _docker_time(text: Any) -> datetime | None:
    """Docker's RFC 3339 times (nanoseconds, `Z`); None for missing or the zero time."""
    if not isinstance(text, str) or not text or text.startswith("0001-"):
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text)
    if m is None:
        return None
    frac = (m.group(2) or "")[:6].ljust(6, "0")
    zone = m.group(3) or "Z"
    zone = "+00:00" if zone == "Z" else zone
    try:
        return datetime.fromisoformat(f"{m.group(1)}.{frac}{zone}")
    except ValueError:
        return None


# -------------------------------------------------------------------- lifecycle


class LocalDocker:
    """launch / get / list / terminate for containers on this machine's Docker engine."""

    def __init__(self, docker: DockerCli) -> None:
        self.docker = docker

    def launch(
        self, offer: Offer, spec: ContainerSpec, *, name: str, labels: Mapping[str, str]
    ) -> Instance:
        hf_cache = hf_cache_dir()
        try:
            hf_cache.mkdir(parents=True, exist_ok=True)  # else docker creates it owned by root
        except OSError as exc:
            raise LaunchFailedError(PROVIDER, f"cannot create {hf_cache} ({exc})") from exc
        last_error = ""
        for _ in range(_PORT_TRIES):
            port = free_port()
            try:
                container_id = self._run(spec, name=name, labels=labels, port=port,
                                         hf_cache=str(hf_cache))  # fmt: skip
            except _DockerFailed as exc:
                last_error = str(exc)
                if _NAME_TAKEN.search(last_error):
                    break  # someone else's container: never clean that one up
                self._clean_failed_start(name)
                if _PORT_TAKEN.search(last_error):
                    continue  # another process took the free port between probe and bind
                break
            return Instance(
                provider=PROVIDER,
                instance_id=name,
                state=InstanceState.PENDING,
                endpoint_url=f"http://127.0.0.1:{port}",
                price_per_hour_usd=0.0,
                started_at=datetime.now(timezone.utc),
                labels={**labels, NAME_LABEL: name},
                gpu=offer.gpu,
                message="created",
                raw={"container_id": container_id, "host_port": port, "image": spec.image},
            )
        raise LaunchFailedError(PROVIDER, f"docker run {spec.image}: {last_error}")

    def _run(
        self,
        spec: ContainerSpec,
        *,
        name: str,
        labels: Mapping[str, str],
        port: int,
        hf_cache: str,
    ) -> str:
        fd, env_path = tempfile.mkstemp(prefix=".docker-env-", dir=private_dir(registry_dir()))
        os.close(fd)  # mkstemp made it 0600; write_env_file reopens it
        try:
            try:
                by_name = write_env_file(Path(env_path), spec.all_env())
            except ValueError as exc:
                raise LaunchFailedError(PROVIDER, str(exc)) from None
            args = docker_run_args(spec, name=name, labels=labels, host_port=port,
                                   env_file=env_path, hf_cache=hf_cache,
                                   env_by_name=by_name)  # fmt: skip
            try:
                return self.docker.run(args, env=by_name)
            except ProviderTimeoutError as exc:
                # the pull or the start may still have created it: the launcher destroys it
                raise LaunchFailedError(PROVIDER, str(exc), instance_id=name) from None
            except ProviderError as exc:
                raise LaunchFailedError(PROVIDER, str(exc)) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(env_path)

    def _clean_failed_start(self, name: str) -> None:
        """A run that failed at start can leave a `created` container: remove it, or hand
        it to the launcher to destroy."""
        try:
            self.terminate(name)
        except ProviderError as exc:
            raise LaunchFailedError(
                PROVIDER, f"docker run failed and cleanup did too ({exc})", instance_id=name
            ) from None

    def get(self, name: str) -> Instance | None:
        for data in self.docker.inspect(name):
            instance = instance_from_inspect(data)
            if instance is not None and instance.instance_id == name:
                return None if instance.state is InstanceState.GONE else instance
        return None

    def list_instances(self, label_prefix: str) -> list[Instance]:
        names = [n for n in self.docker.names() if n.startswith(label_prefix)]
        found = []
        for data in self.docker.inspect(*names):
            instance = instance_from_inspect(data)
            if instance is not None and instance.state is not InstanceState.GONE:
                found.append(instance)
        return found

    def terminate(self, name: str) -> None:
        for data in self.docker.inspect(name):
            if instance_from_inspect(data) is not None:  # never remove a stranger's container
                self.docker.remove(str(data.get("Id") or name))
