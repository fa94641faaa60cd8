"""`deployctl schedule export`: ready-to-use snippets that keep ticks coming.

- cron: `schedule tick` every minute (ticks are idempotent and safe to overlap);
- systemd: a user service running `schedule run` (SIGTERM stops it cleanly);
- GitHub Actions: a workflow ticking every 5 minutes, its state database carried from run
  to run in the Actions cache, seeded with this machine's schedules on its first run.

Whatever runs the ticks, the guard of each session's deployment ends it at its window's
end + grace on its own: a tick that never comes cannot make a session outlive its window.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .paths import data_dir
from .schedule_store import Schedule
from .schedule_time import zone
from .units import format_duration

__all__ = ["snippet"]


def _deployctl() -> str:
    """This deployctl, by absolute path (cron and systemd have a bare PATH)."""
    beside = Path(sys.executable).parent / "deployctl"  # the console script of this venv
    found = str(beside) if beside.is_file() else shutil.which("deployctl")
    if found:
        return shlex.quote(os.path.abspath(found))
    return f"{shlex.quote(sys.executable)} -m orchestrator.cli"


def _env_lines() -> list[tuple[str, str]]:
    return [(name, os.environ[name]) for name in ("DEPLOYCTL_STATE_DIR", "XDG_CONFIG_HOME",
                                                  "XDG_DATA_HOME") if os.environ.get(name)]


def snippet(kind: str, *, interval_s: float, schedules: list[Schedule]) -> str:
    if kind == "cron":
        return _cron()
    if kind == "systemd":
        return _systemd(interval_s)
    return _github(schedules)


def _cron() -> str:
    env = "".join(f"{k}={shlex.quote(v)}\n" for k, v in _env_lines())
    log = str(data_dir() / "schedule.log")
    return f"""\
# deployctl scheduled sessions: tick every minute (`crontab -e`, paste these lines).
# Ticks are idempotent and safe to overlap: two at once never start a session twice.
# Credentials: cron does not read your shell profile; keep them in deployctl's config
# (`deployctl config set ...`) or add VAST_API_KEY=... lines here (keep the crontab private).
{env}* * * * * {_deployctl()} schedule tick >> {shlex.quote(log)} 2>&1
"""


def _systemd(interval_s: float) -> str:
    env = "".join(f'Environment="{k}={_systemd_quoted(v)}"\n' for k, v in _env_lines())
    return f"""\
# ~/.config/systemd/user/deployctl-schedule.service
# Install: systemctl --user daemon-reload && systemctl --user enable --now deployctl-schedule
# Keep it running while you are logged out: loginctl enable-linger "$USER"
# Logs: journalctl --user -u deployctl-schedule -f
[Unit]
Description=deployctl scheduled sessions (ticks every {interval_s:g} s)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart={_deployctl()} schedule run --interval {interval_s:g}
{env}# Credentials: from deployctl's config, or an EnvironmentFile= you keep mode 0600.
Restart=on-failure
RestartSec=10
# SIGTERM stops the loop; a launch in flight is destroyed and its session given back.
KillSignal=SIGTERM
TimeoutStopSec=300
# Local sessions are processes of this service: let them live out their own ttl.
KillMode=process

[Install]
WantedBy=default.target
"""


def _systemd_quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def _add_line(s: Schedule, now: datetime) -> str:
    start = s.first_start_at.astimezone(zone(s.tz)).strftime("%Y-%m-%d %H:%M")
    past = s.first_start_at + timedelta(seconds=s.duration_s) <= now
    at = [] if past and s.repeat_cron else ["--at", start]  # a repeat: its next occurrence
    args = ["deployctl", "schedule", "add", s.task, *at, "--tz", s.tz,
            "--for", format_duration(s.duration_s), "--grace", format_duration(s.grace_s),
            "--lead", "auto" if s.lead_s is None else format_duration(s.lead_s)]
    if s.repeat_cron:
        args += ["--repeat", s.repeat_cron]
    for p in s.providers:
        args += ["--provider", p]
    return shlex.join(args)


def _github(schedules: list[Schedule]) -> str:
    now = datetime.now(timezone.utc)
    adds = [_add_line(s, now) for s in schedules
            if s.repeat_cron or s.first_start_at + timedelta(seconds=s.duration_s) > now]
    warn = "echo '::warning::could not seed a schedule'"
    seed = "\n".join(f"          {line} || {warn}" for line in adds) or \
        "          echo 'no schedules to seed: add some with deployctl schedule add'"
    return f"""\
# .github/workflows/deployctl-schedule.yml
# Ticks every 5 minutes (GitHub's shortest interval; its scheduled runs may start late:
# book with --lead of at least 15m). The state database travels between runs in the
# Actions cache (it holds endpoint keys: only people with write access can read it).
# Secrets to set: VAST_API_KEY and/or RUNPOD_API_KEY (Settings -> Secrets -> Actions).
name: deployctl schedule
on:
  schedule:
    - cron: "*/5 * * * *"
  workflow_dispatch: {{}}
concurrency:
  group: deployctl-schedule
  cancel-in-progress: false  # never cancel a tick that is launching or ending a session
jobs:
  tick:
    runs-on: ubuntu-latest
    timeout-minutes: 60
    env:
      DEPLOYCTL_STATE_DIR: ${{{{ github.workspace }}}}/.deployctl-state
      VAST_API_KEY: ${{{{ secrets.VAST_API_KEY }}}}
      RUNPOD_API_KEY: ${{{{ secrets.RUNPOD_API_KEY }}}}
    steps:
      - uses: actions/setup-python@v5
        with:
          python-version: "3.12"
      - run: pip install deployctl
      - id: state
        uses: actions/cache/restore@v4
        with:
          path: .deployctl-state
          key: deployctl-state-${{{{ github.run_id }}}}
          restore-keys: deployctl-state-
      - name: Seed the schedules (first run only)
        if: steps.state.outputs.cache-matched-key == ''
        run: |
{seed}
      - name: Tick
        run: deployctl schedule tick
      - if: always()
        uses: actions/cache/save@v4
        with:
          path: .deployctl-state
          key: deployctl-state-${{{{ github.run_id }}}}
"""

