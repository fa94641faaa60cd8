"""No key is ever printed, logged or stored where people read: the whole lifecycle on the
fake Vast and RunPod clouds, then a search of everything it left behind.

Secrets: the provider account key, a wrong key the user typed, every instance's scoped
provider key (Vast's CONTAINER_API_KEY, RunPod's pod-scoped RUNPOD_API_KEY), every
endpoint key, and the HF token. What is searched (tests/faults/harness.py,
`Cloud.artifacts`): the stdout and stderr of every deployctl run (`--json` documents,
tables, progress, error messages), every file of the state dir (the SQLite database and
its WAL; not `keys/`, the key store itself), and every file the instances wrote
(guard.log, container.log). Exempt, because they print the key on purpose: the stdout of
`up --show-key`, and the `Key:` and `Try:` lines of a human `up` (DESIGN §1.6).
The fault suites run the same search after every trial (`harness.leaks`).
"""

from __future__ import annotations

import secrets
import signal
import stat

import httpx
import pytest

from tests.faults.harness import CliRun, Cloud, leaks, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _ok(run: CliRun) -> dict:
    assert run.code == 0, f"deployctl {' '.join(run.argv)} -> {run.code}\n{run.stderr}"
    return run.json() if "--json" in run.argv else {}


def _key_files(cloud: Cloud) -> list:
    keys = cloud.state_dir / "keys"
    return [p for p in keys.iterdir() if not p.name.startswith(".")] if keys.is_dir() else []


@pytest.mark.parametrize("provider", ["vast", "runpod"])
def test_no_secret_in_any_output_log_or_database(provider, tmp_path):
    hf_token = "hf_" + secrets.token_hex(17)
    with Cloud(provider, tmp_path, hf_token=hf_token) as cloud:
        # 1. up as a script would (--json, no key); look at it the ways people do; down
        plain = _ok(cloud.cli(*cloud.up_args()))
        assert "key" not in plain
        _ok(cloud.cli("status", "--json"))
        _ok(cloud.cli("status"))
        _ok(cloud.cli("down", plain["deployment_id"], "--json"))

        # 2. up for a person who wants the key; real requests; the idle guard destroys
        # its instance with its scoped key; status closes the deployment
        shown = _ok(cloud.cli(*cloud.up_args("--show-key", "--keep-alive", "3s")))
        key_file = cloud.state_dir / "keys" / shown["deployment_id"]
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
        auth = {"Authorization": f"Bearer {shown['key']}"}
        chat = {"model": shown["model"], "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4}  # fmt: skip
        r = httpx.post(f"{shown['endpoint_url']}/chat/completions", json=chat, headers=auth,
                       timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        wrong = {"Authorization": "Bearer not-the-key-" + secrets.token_hex(8)}
        r = httpx.post(f"{shown['endpoint_url']}/chat/completions", json=chat, headers=wrong,
                       timeout=30)  # fmt: skip
        assert r.status_code == 401
        logs = cloud.cli("logs", shown["deployment_id"])
        assert logs.code == 0 and "/v1/chat/completions" in logs.stdout, logs.stderr
        _ok(cloud.cli("status", "--json"))
        wait_until(lambda: shown["instance_id"] in cloud.fleet.destroyed, 30, "the idle teardown")
        assert cloud.fleet.destroyed[shown["instance_id"]].destroyed_by == "scoped"
        _ok(cloud.cli("status", "--json"))

        # 3. a human up: the key is printed on purpose, on its own two lines only
        human = cloud.cli(*[a for a in cloud.up_args() if a != "--json"])
        assert human.code == 0, human.stderr
        purposeful = [ln for ln in human.stdout.splitlines() if ln.startswith(("Key:", "Try:"))]
        assert len(purposeful) == 2
        human.stdout = "\n".join(ln for ln in human.stdout.splitlines() if ln not in purposeful)
        _ok(cloud.cli("down", "--all", "--json"))

        # 4. a launcher killed while the instance boots, then reap
        cloud.fleet.boot_delay_s = 2.0
        proc = cloud.start(*cloud.up_args())
        wait_until(lambda: cloud.fleet.instances, 60, "the rent")
        proc.send_signal(signal.SIGKILL)
        cloud.finish(proc)
        cloud.fleet.boot_delay_s = 0.3
        assert _ok(cloud.cli("reap", "--json"))["destroyed"]

        # 5. failures: a model that never loads, flaky APIs, a wrong account key
        cloud.fleet.engine_args = "--never-ready"
        never = cloud.cli(*cloud.up_args("--ready-timeout", "2", "--max-attempts", "1"))
        assert never.code == 1 and "error:" in never.stderr
        cloud.fleet.engine_args = ""
        cloud.api.fail_randomly(0.3, seed=provider)
        flaky = cloud.cli(*cloud.up_args(), short_deadlines=True)
        if flaky.code == 0:
            _ok(cloud.cli("down", flaky.json()["deployment_id"], "--json"))
        cloud.api.reset_faults()
        wrong_key = ("vast-" if provider == "vast" else "rpa_") + secrets.token_hex(16)
        key_var = "VAST_API_KEY" if provider == "vast" else "RUNPOD_API_KEY"
        right_key, cloud.env[key_var] = cloud.env[key_var], wrong_key
        refused = cloud.cli(*cloud.up_args())
        assert refused.code in (1, 4) and "error:" in refused.stderr, refused.stderr
        cloud.env[key_var] = right_key

        # 6. the end: nothing live, no key file left behind
        _ok(cloud.cli("status", "--all", "--json"))
        assert _ok(cloud.cli("reap", "--json"))["orphans"] == []
        assert cloud.live_ids() == []
        assert _key_files(cloud) == []

        # the account key never enters an instance: only the instance-scoped key does
        for inst in cloud.created().values():
            inside = {**inst.env, **inst.injected}
            assert cloud.api.api_key not in inside.values(), inst.instance_id
            assert right_key not in " ".join(inside.values())

        found = cloud.secrets()
        assert sum(name.endswith("endpoint key") for name in found) >= 5
        assert sum(name.endswith("scoped key") for name in found) >= 5
        artifacts = cloud.artifacts()
        names = " ".join(name for name, _ in artifacts)
        assert "state.db" in names and "guard.log" in names and "container.log" in names
        assert any(b"/v1/chat/completions" in data for _, data in artifacts)  # logs were read
        assert leaks(cloud, {"wrong account key": wrong_key}) == []
        # the search does find what is there (a deployment id is printed, logged, stored)
        seen = leaks(cloud, {"id": plain["deployment_id"]})
        assert any("state.db" in s for s in seen) and any("(stdout)" in s for s in seen)
