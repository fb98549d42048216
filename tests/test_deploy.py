"""The deployment files: systemd units pass ``systemd-analyze verify`` (with their paths pointed at
things that exist), and the rendered nginx configs pass ``nginx -t`` (site file and standalone)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

UNITS = ROOT / "deploy" / "systemd"
RENDER = ROOT / "deploy" / "nginx" / "render.py"


def _tool(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if Path(p).exists()), None)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/install.sh installs it)")
    return path


def _local_units(tmp_path: Path) -> Path:
    """The units with /opt/voice-services -> this checkout and /etc, /var paths -> tmp (all existing)."""
    for svc in ("asr", "tts"):
        text = (UNITS / f"voice-agent-{svc}@.service").read_text()
        text = (text.replace("/opt/voice-services", str(ROOT)).replace("/etc/voice-services", str(tmp_path))
                .replace("/var/lib/voice-services/voices", str(tmp_path)))
        (tmp_path / f"voice-agent-{svc}@.service").write_text(text)
        (tmp_path / f"{svc}.env").write_text("")
    return tmp_path


def test_systemd_units_verify(tmp_path):
    analyze = _tool("systemd-analyze")
    units = _local_units(tmp_path)
    run = subprocess.run([analyze, "verify", str(units / "voice-agent-asr@8001.service"),
                          str(units / "voice-agent-tts@8002.service")], capture_output=True, text=True, timeout=60)
    if run.returncode != 0 and "Failed to" in run.stderr and "verify" not in run.stderr and not run.stdout:
        pytest.skip(f"systemd-analyze cannot run here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    # and it does catch a broken unit
    broken = (units / "voice-agent-asr@.service").read_text().replace(
        f"ExecStart={ROOT}/.venv/bin/python", "ExecStart=/nonexistent/python")
    (units / "broken@.service").write_text(broken)
    bad = subprocess.run([analyze, "verify", str(units / "broken@1.service")], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "/nonexistent/python" in bad.stderr


def test_units_stop_timeout_exceeds_drain_and_harden():
    from services.asr.settings import load as load_asr
    from services.common.serve import GRACEFUL_SHUTDOWN_S
    from services.tts.settings import load as load_tts

    for svc, settings in (("asr", load_asr()), ("tts", load_tts())):
        lines = dict(line.split("=", 1) for line in (UNITS / f"voice-agent-{svc}@.service").read_text().splitlines()
                     if "=" in line and not line.startswith("#") and not line.startswith("EnvironmentFile"))
        # the drain, then uvicorn's grace, then margin: systemd must not SIGKILL a draining instance
        assert float(lines["TimeoutStopSec"]) >= settings.server.drain_timeout_s + GRACEFUL_SHUTDOWN_S + 10
        # the service reports readiness and feeds the watchdog; memory and threads are capped
        assert lines["Type"] == "notify" and lines["NotifyAccess"] == "main" and int(lines["WatchdogSec"]) > 0
        assert lines["MemoryMax"] and lines["MemoryHigh"] and int(lines["TasksMax"]) > 0
        for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                           ("PrivateTmp", "yes"), ("User", "voice"), ("Restart", "on-failure")):
            assert lines[key] == value, (svc, key)
    assert "ReadWritePaths=/var/lib/voice-services/voices" in (UNITS / "voice-agent-tts@.service").read_text()


def test_nginx_configs_pass_nginx_t(tmp_path):
    nginx = _tool("nginx")
    checked_in = ROOT / "deploy" / "nginx" / "voice-services.conf"
    rendered = subprocess.run([sys.executable, str(RENDER), "--asr", "127.0.0.1:8001,127.0.0.1:8011", "--tts",
                               "127.0.0.1:8002,127.0.0.1:8012"], capture_output=True, text=True, check=True).stdout
    assert rendered == checked_in.read_text(), "deploy/nginx/voice-services.conf is stale: re-render it"
    wrapper = tmp_path / "site.conf"
    wrapper.write_text(f"events {{}}\nhttp {{\n include {checked_in};\n}}\npid {tmp_path}/n.pid;\n"
                       f"error_log {tmp_path}/e.log;\n")
    standalone = subprocess.run([sys.executable, str(RENDER), "--asr", "9001", "--tts", "9002,9003", "--listen",
                                 "127.0.0.1:9080", "--standalone", str(tmp_path), "--user", "root"],
                                capture_output=True, text=True, check=True).stdout
    (tmp_path / "nginx.conf").write_text(standalone)
    for conf in (wrapper, tmp_path / "nginx.conf"):
        run = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "e.log")],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
    assert "least_conn" in rendered and "proxy_next_upstream error timeout http_502 http_503" in rendered
    assert "client_max_body_size 101m" in rendered and "client_max_body_size 21m" in rendered
    # a dead or restarting instance is skipped (passive health) and a refused try moves on to the next one
    assert "max_fails=3 fail_timeout=10s" in rendered and "proxy_next_upstream_tries 0" in rendered
    # on SIGQUIT (start_all.sh stopping) nginx keeps draining streams open, for a bounded time
    assert "worker_shutdown_timeout 60s;" in standalone and "worker_shutdown_timeout" not in rendered
    # a POST is never replayed on another instance; no shipped access log records a query string (keys)
    assert "non_idempotent" not in rendered and "non_idempotent" not in standalone
    for config in (rendered, standalone):
        log_lines = [line for line in config.splitlines() if "access_log" in line or "log_format" in line
                     or line.strip().startswith("'$")]
        assert all("voice_services" in line for line in log_lines if "access_log" in line), log_lines
        assert not any(v in line for line in log_lines for v in ("$request ", "$request_uri", "$args", "$query"))
