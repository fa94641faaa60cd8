"""`deployctl up --provider hf` end to end on the fake Inference Endpoints API: a managed
endpoint has no guard, so readiness uses the platform's own token and deployctl itself
deletes the endpoint at its ttl (on `status`/`reap`)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from orchestrator.cli import main
from tests.fakes.hf_api import DEFAULT_HF_TOKEN, serve_hf

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def hf(monkeypatch, tmp_path):
    pytest.importorskip("huggingface_hub")
    with serve_hf() as (api, url):
        monkeypatch.setenv("HF_ENDPOINTS_API_URL", f"{url}/v2")
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", DEFAULT_HF_TOKEN)
        monkeypatch.delenv("HF_NAMESPACE", raising=False)
        monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path / "state"))
        yield api


def run_json(capsys, *argv):
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else {})


def test_up_call_then_ttl_deletes_the_endpoint(hf, capsys):
    code, up = run_json(capsys, "up", "qwen2.5-7b", "--provider", "hf", "--ttl", "5s",
                        "--keep-alive", "1m", "--ready-timeout", "60", "--show-key")
    assert code == 0, up
    assert up.get("key", "") == ""  # no deployctl key: the platform's own token is the key
    r = httpx.post(f"{up['endpoint_url']}/chat/completions",
                   headers={"Authorization": f"Bearer {DEFAULT_HF_TOKEN}"},
                   json={"model": up["model"], "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 4}, timeout=30)
    assert r.status_code == 200, r.text
    time.sleep(5.5)
    code, status = run_json(capsys, "status", "--all")
    (row,) = status["deployments"]
    assert row["status"] == "ended" and "ttl" in row["end_reason"]
    code, reaped = run_json(capsys, "reap", "--provider", "hf")
    assert code == 0 and reaped["orphans"] == []
