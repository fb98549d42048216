"""The container deployment files agree with the services: the Helm chart's autoscalers name the live-session
gauges the services' ``/metrics`` export, grace periods cover the drain the services are configured with, and
the compose stack's nginx configuration is render.py's output. Cheap: no image build, no cluster (the rendering
test needs helm, which scripts/test_deploy.sh installs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from services.asr.serving import AsrMetrics
from services.asr.settings import load as load_asr
from services.common.serve import GRACEFUL_SHUTDOWN_S
from services.tts.serving import TtsMetrics
from services.tts.settings import load as load_tts

CHART = ROOT / "deploy" / "helm" / "voice-services"
COMPOSE = ROOT / "deploy" / "compose"
EXPORTED = {"asr": AsrMetrics, "tts": TtsMetrics}  # what each service's GET /metrics renders
SETTINGS = {"asr": load_asr, "tts": load_tts}


def _exported(svc: str) -> set[str]:
    text = EXPORTED[svc]().render().decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def _values(name: str = "values.yaml") -> dict:
    return yaml.safe_load((CHART / name).read_text())


@pytest.mark.parametrize("svc", ["asr", "tts"])
def test_the_autoscaler_scales_on_a_gauge_the_service_exports(svc):
    for values in (_values(), *(_values(f"ci/{p.name}") for p in (CHART / "ci").glob("*.yaml"))):
        metric = (values.get(svc, {}).get("autoscaling", {}).get("sessionsMetric")
                  or _values()[svc]["autoscaling"]["sessionsMetric"])
        assert metric in _exported(svc), f"{metric} is not on {svc}'s /metrics"
    text = EXPORTED[svc]().render().decode()
    assert f"# TYPE {_values()[svc]['autoscaling']['sessionsMetric']} gauge" in text  # a per-pod level, not a count
    # and the check can fail: a renamed metric would not be found
    assert f"{svc}_sessions_live" not in _exported(svc)


@pytest.mark.parametrize("svc", ["asr", "tts"])
def test_grace_periods_cover_the_configured_drain(svc):
    drain_s = SETTINGS[svc]().server.drain_timeout_s
    v = _values()[svc]
    assert v["drainTimeoutS"] == drain_s, "the chart sets the drain the service is documented with"
    assert v["terminationGracePeriodSeconds"] > v["preStopSleepS"] + drain_s + GRACEFUL_SHUTDOWN_S
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    grace = compose["services"][svc]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > drain_s + GRACEFUL_SHUTDOWN_S
    assert compose["services"][svc]["restart"] in ("always", "unless-stopped")


def test_compose_nginx_conf_is_render_py_output():
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "deploy/nginx/render.py"), "--standalone", "/tmp/nginx", "--user", "nobody nogroup",
         "--workers", "2", "--listen", "8080", "--asr", "asr:8001", "--tts", "tts:8002"],
        capture_output=True, text=True, check=True).stdout
    assert rendered == (COMPOSE / "nginx.conf").read_text(), "deploy/compose/nginx.conf is stale: re-render it"


def _helm() -> str:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voice-services-deploy"
    cache = Path(os.environ.get("VOICE_DEPLOY_CACHE", default))
    path = shutil.which("helm") or (str(cache / "bin" / "helm") if (cache / "bin" / "helm").exists() else None)
    if path is None:
        pytest.skip("helm is not installed (scripts/test_deploy.sh installs it)")
    return path


def test_default_render_has_each_services_objects_and_session_hpa():
    out = subprocess.run([_helm(), "template", "voice", str(CHART)], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    for svc in ("asr", "tts"):
        mine = {d["kind"]: d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == svc}
        assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= set(mine)
        hpa = mine["HorizontalPodAutoscaler"]
        assert hpa["apiVersion"] == "autoscaling/v2"
        kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
        assert kinds["Pods"]["pods"]["metric"]["name"] in _exported(svc)
        assert kinds["Resource"]["resource"]["name"] == "cpu"
        pod = mine["Deployment"]["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > SETTINGS[svc]().server.drain_timeout_s + GRACEFUL_SHUTDOWN_S
        probes = pod["containers"][0]
        assert probes["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert probes["livenessProbe"]["httpGet"]["path"] == "/health"
    # a grace period that does not cover the drain is refused at render time
    short = subprocess.run([_helm(), "template", "voice", str(CHART), "--set", "asr.terminationGracePeriodSeconds=30"],
                           capture_output=True, text=True, timeout=60)
    assert short.returncode != 0 and "must exceed" in short.stderr
