"""The launcher's contract with an in-memory provider: journal first, fallback, cleanup."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from orchestrator import launcher as launcher_mod
from orchestrator.errors import DeployctlError, LaunchFailedError, OfferUnavailableError
from orchestrator.health import NotReadyError
from orchestrator.launcher import Launcher, LaunchOptions
from orchestrator.models import (
    CredentialStatus,
    DeploymentStatus,
    Instance,
    InstanceState,
    Offer,
)
from orchestrator.planner import make_plan
from orchestrator.state import State, load_key
from orchestrator.taskfile import load_task


class MemoryProvider:
    """Instances in a dict; `unavailable` offer ids fail at rent."""

    name = "mem"
    teardown = "none"

    def __init__(self, unavailable=(), half_created=()):
        self.instances: dict[str, Instance] = {}
        self.unavailable = set(unavailable)
        self.half_created = set(half_created)
        self.calls: list[str] = []
        self.counter = 0

    def check_credentials(self):
        return CredentialStatus(ok=True)

    def list_offers(self, query):
        return [offer(i) for i in range(1, 6) if f"o{i}" not in self.unavailable]

    def launch(self, offer, spec, *, name, labels):
        self.calls.append(f"launch {offer.offer_id}")
        assert spec.secret_env["DEPLOYCTL_ENDPOINT_KEY"].get_secret_value()
        if offer.offer_id in self.half_created:
            self.counter += 1
            iid = f"i{self.counter}"
            self.instances[iid] = Instance(provider="mem", instance_id=iid,
                                           state=InstanceState.PENDING, labels=labels)
            raise LaunchFailedError("mem", "created then failed", instance_id=iid)
        self.counter += 1
        iid = f"i{self.counter}"
        self.instances[iid] = Instance(
            provider="mem", instance_id=iid, state=InstanceState.RUNNING,
            endpoint_url=f"http://mem/{iid}", labels=labels,
            price_per_hour_usd=offer.price_per_hour_usd,
        )
        return self.instances[iid]

    def get(self, iid):
        return self.instances.get(iid)

    def list_instances(self, label_prefix="deployctl-"):
        return list(self.instances.values())

    def terminate(self, iid):
        self.calls.append(f"terminate {iid}")
        self.instances.pop(iid, None)


def offer(i: int) -> Offer:
    return Offer(provider="mem", offer_id=f"o{i}", gpu="RTX4090", gpu_count=1, vram_gib=24,
                 price_per_hour_usd=0.1 * i, quoted_at=datetime.now(timezone.utc))


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
    with State.open() as s:
        yield s


def candidates():
    task = load_task("qwen-14b")
    return task, make_plan(task, [offer(i) for i in range(1, 6)]).feasible


def ready_unless(bad_endpoints: set[str]):
    def fake_wait_ready(endpoint_url, key, model, **kwargs):
        if endpoint_url in bad_endpoints:
            raise NotReadyError("loading model", "never answered")
        return 0.1
    return fake_wait_ready


def test_fallback_after_vanished_offers_records_every_attempt(state, monkeypatch):
    monkeypatch.setattr(launcher_mod, "wait_ready", ready_unless(set()))
    provider = MemoryProvider(unavailable={"o1", "o2"})
    task, cands = candidates()
    result = Launcher(state, {"mem": provider}, options=LaunchOptions(poll_s=0.01)).up(task, cands)
    assert result.deployment.status is DeploymentStatus.READY
    assert result.deployment.offer_key == "mem:o3"
    attempts = state.attempts(result.deployment.id)
    assert [a.outcome for a in attempts] == ["unavailable", "unavailable", "ready"]
    assert provider.calls == ["launch o3"]  # re-validation caught o1, o2 before renting
    journal = state.journal(result.deployment.id)
    assert [(j.action, j.state) for j in journal] == [
        ("rent", "failed"), ("rent", "failed"), ("rent", "done")]
    assert load_key(result.deployment.id) == result.key


def test_never_ready_is_destroyed_verified_and_next_tried(state, monkeypatch):
    monkeypatch.setattr(launcher_mod, "wait_ready", ready_unless({"http://mem/i1"}))
    provider = MemoryProvider()
    task, cands = candidates()
    result = Launcher(state, {"mem": provider}, options=LaunchOptions(poll_s=0.01)).up(task, cands)
    assert provider.calls == ["launch o1", "terminate i1", "launch o2"]
    assert "i1" not in provider.instances
    outcomes = [(a.outcome, a.instance_id) for a in state.attempts(result.deployment.id)]
    assert outcomes == [("failed", "i1"), ("ready", "i2")]
    terminated = [j for j in state.journal(result.deployment.id) if j.action == "terminate"]
    assert [(j.instance_id, j.state) for j in terminated] == [("i1", "done")]


def test_half_created_instance_is_destroyed(state, monkeypatch):
    monkeypatch.setattr(launcher_mod, "wait_ready", ready_unless(set()))
    provider = MemoryProvider(half_created={"o1"})
    task, cands = candidates()
    Launcher(state, {"mem": provider}, options=LaunchOptions(poll_s=0.01)).up(task, cands)
    assert provider.calls[:2] == ["launch o1", "terminate i1"]


def test_all_fail_raises_with_every_attempt_and_leaves_nothing(state, monkeypatch):
    monkeypatch.setattr(launcher_mod, "wait_ready", ready_unless(
        {f"http://mem/i{n}" for n in range(1, 9)}))
    provider = MemoryProvider()
    task, cands = candidates()
    with pytest.raises(DeployctlError) as info:
        Launcher(state, {"mem": provider}, options=LaunchOptions(poll_s=0.01, max_attempts=3)
                 ).up(task, cands)
    assert "after 3 attempts" in str(info.value)
    assert provider.instances == {}
    (dep,) = state.list_deployments()
    assert dep.status is DeploymentStatus.FAILED and load_key(dep.id) is None


def test_interrupt_destroys_what_was_created(state, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(launcher_mod, "wait_ready", interrupted)
    provider = MemoryProvider()
    task, cands = candidates()
    with pytest.raises(KeyboardInterrupt):
        Launcher(state, {"mem": provider}, options=LaunchOptions(poll_s=0.01)).up(task, cands)
    assert provider.instances == {} and provider.calls == ["launch o1", "terminate i1"]
    (dep,) = state.list_deployments()
    assert dep.status is DeploymentStatus.FAILED and "interrupted" in dep.end_reason
    assert state.live_instances() == []


@pytest.mark.parametrize("created", [True, False])
def test_interrupt_inside_the_rent_call_finds_and_destroys_its_instance(
    state, monkeypatch, created
):
    """SIGTERM/Ctrl-C while the rent request is in flight: the provider may have made the
    instance without the launcher hearing of it. The launcher looks it up by its label."""
    monkeypatch.setattr(launcher_mod, "wait_ready", ready_unless(set()))
    monkeypatch.setattr(launcher_mod.time, "sleep", lambda s: None)
    provider = MemoryProvider()
    provider.instances["other"] = Instance(  # another deployment's: left alone
        provider="mem", instance_id="other", state=InstanceState.RUNNING,
        labels={"deployctl": "someone-else"})
    original = provider.launch

    def launch(offer, spec, *, name, labels):
        if created:
            original(offer, spec, name=name, labels=labels)
        raise KeyboardInterrupt  # the signal lands before the answer is read

    provider.launch = launch
    task, cands = candidates()
    with pytest.raises(KeyboardInterrupt):
        Launcher(state, {"mem": provider}, options=LaunchOptions(poll_s=0.01)).up(task, cands)
    assert list(provider.instances) == ["other"]
    assert provider.calls == (["launch o1", "terminate i1"] if created else [])
    (dep,) = state.list_deployments()
    assert dep.status is DeploymentStatus.FAILED
    assert state.open_intents() == []  # the rent intent is resolved, not left for `reap`
    rent = [j for j in state.journal(dep.id) if j.action == "rent"]
    assert [(j.state, j.instance_id) for j in rent] == [("failed", "i1" if created else None)]


def test_offer_unavailable_at_launch(state, monkeypatch):
    monkeypatch.setattr(launcher_mod, "wait_ready", ready_unless(set()))
    provider = MemoryProvider()
    original = provider.launch

    def launch(offer, spec, *, name, labels):
        if offer.offer_id == "o1":
            raise OfferUnavailableError("mem", "rented by someone else")
        return original(offer, spec, name=name, labels=labels)

    provider.launch = launch
    task, cands = candidates()
    result = Launcher(state, {"mem": provider}, options=LaunchOptions(poll_s=0.01)).up(task, cands)
    assert [a.outcome for a in state.attempts(result.deployment.id)] == ["unavailable", "ready"]


def test_destroy_outlasts_a_flaky_provider_api_and_gives_up_at_its_deadline(state):
    """terminate is tried again after the provider's own retries ran out, and a failing
    read while verifying is waited out; past the deadline it fails, journaled."""
    from orchestrator.errors import ProviderUnavailableError
    from orchestrator.launcher import destroy_and_verify

    provider = MemoryProvider()
    provider.instances["i9"] = Instance(provider="mem", instance_id="i9",
                                        state=InstanceState.RUNNING)  # fmt: skip
    faults = {"terminate": 3, "get": 2}
    real_terminate, real_get = provider.terminate, provider.get

    def flaky(name, real):
        def call(iid):
            if faults[name] > 0:
                faults[name] -= 1
                raise ProviderUnavailableError("mem", "HTTP 503 from the API")
            return real(iid)
        return call

    provider.terminate, provider.get = flaky("terminate", real_terminate), flaky("get", real_get)
    dep = state.new_deployment("t", "{}", 60, 600)
    destroy_and_verify(state, provider, dep.id, "i9", timeout_s=10, poll_s=0.01)
    assert provider.instances == {} and faults == {"terminate": 0, "get": 0}
    (entry,) = state.journal(dep.id)
    assert (entry.action, entry.state) == ("terminate", "done")

    provider.instances["i10"] = Instance(provider="mem", instance_id="i10",
                                         state=InstanceState.RUNNING)  # fmt: skip
    faults["terminate"] = 10_000
    with pytest.raises(ProviderUnavailableError):
        destroy_and_verify(state, provider, dep.id, "i10", timeout_s=0.2, poll_s=0.01)
    assert "i10" in provider.instances
    assert [e.state for e in state.journal(dep.id)] == ["done", "failed"]
