"""The whole lifecycle on the local provider with the real engine (llama.cpp, SmolLM2-135M)."""

from __future__ import annotations

import time

import httpx
import pytest

from .conftest import needs_local_engine

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _chat(endpoint: str, key: str | None, model: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        f"{endpoint}/chat/completions",
        headers=headers,
        json={"model": model, "messages": [{"role": "user", "content": "Say hello."}],
              "max_tokens": 16},
        timeout=60,
    )


def test_up_request_idle_teardown_status(cli):
    needs_local_engine()
    up = cli.json("up", "smollm2-135m", "--provider", "local", "--keep-alive", "20s",
                  "--show-key", "--ready-timeout", "120")
    endpoint, key, model = up["endpoint_url"], up["key"], up["model"]
    assert up["provider"] == "local" and endpoint.startswith("http://127.0.0.1:")

    r = _chat(endpoint, key, model)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].strip()
    assert r.json()["usage"]["completion_tokens"] > 0
    assert _chat(endpoint, None, model).status_code == 401
    assert _chat(endpoint, "wrong-key", model).status_code == 401

    # Health pings every 2 s for up to 40 s must not keep it alive: the guard
    # destroys it ~20 s after the last real request.
    last_request = time.monotonic()
    health = endpoint.removesuffix("/v1") + "/health"
    gone_after = None
    while time.monotonic() - last_request < 40:
        try:
            httpx.get(health, timeout=2)
        except httpx.HTTPError:
            gone_after = time.monotonic() - last_request
            break
        time.sleep(2)
    assert gone_after is not None, "health pings kept the instance alive"
    assert 18 <= gone_after <= 32

    status = cli.json("status", "--all")
    (row,) = [d for d in status["deployments"] if d["id"] == up["deployment_id"]]
    assert row["status"] == "ended" and "gone" in row["end_reason"]
    assert cli.json("status")["deployments"] == []


def test_up_then_down_verifies_gone(cli):
    needs_local_engine()
    up = cli.json("up", "smollm2-135m", "--provider", "local", "--keep-alive", "10m",
                  "--ready-timeout", "120")
    assert "key" not in up  # secrets only with --show-key
    down = cli.json("down", up["deployment_id"])
    assert down["ended"][0]["status"] == "ended"
    health = up["endpoint_url"].removesuffix("/v1") + "/health"
    with pytest.raises(httpx.HTTPError):
        httpx.get(health, timeout=2)
    assert cli.json("reap", "--provider", "local")["orphans"] == []
