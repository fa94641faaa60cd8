"""The `deployctl` program's entry point: standard library only until it runs a command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from orchestrator import entry

ROOT = entry.__file__.rsplit("/orchestrator/", 1)[0]


def test_entry_imports_nothing_heavy():
    heavy = ("click", "pydantic", "httpx", "yaml", "rich")
    code = (f"import sys, orchestrator.entry as e; e.socket_path(); "
            f"print([m for m in {heavy!r} if m in sys.modules])")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout  # fmt: skip
    assert out.strip() == "[]"


def test_no_socket_means_no_agent(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYCTL_STATE_DIR", str(tmp_path))
    assert entry.run_via_agent(["status"]) is None
    assert entry.run_via_agent(["status"], path=str(tmp_path / ("x" * 200))) is None


def test_a_dead_agents_socket_means_no_agent(tmp_path):
    import socket

    path = str(tmp_path / "agent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.close()  # the file stays, nobody listens
    assert entry.run_via_agent(["status"], path=path) is None


def test_request_carries_what_the_child_needs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOME_SETTING", "a\nb'\"c")
    request = entry.request_for(["plan", "x"])
    assert request["argv"] == ["plan", "x"] and request["cwd"] == str(tmp_path)
    assert request["env"]["SOME_SETTING"] == "a\nb'\"c"
    assert request["executable"] == sys.executable
    assert 0 <= request["umask"] <= 0o777
    assert json.loads(json.dumps(request)) == request
    assert os.umask(request["umask"]) == request["umask"]  # reading it changed nothing
