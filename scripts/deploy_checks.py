#!/usr/bin/env python3
"""The checks scripts/test_deploy.sh runs against containers and rendered charts (needs the project's .venv).

    deploy_checks.py stream WS_BASE [--speed X] [--expect-close 1000] [--out FILE]
        stream tests/data/asr/jfk.wav to WS_BASE/v1/stream/asr; print (or write to FILE) the final text as JSON;
        exit 1 unless the session closed with the expected code and the words are the reference's.
    deploy_checks.py wait-metric HTTP_BASE... --name asr_sessions_active --value 1 [--timeout-s 60]
        print the first base whose metric reaches the value (the metric is read, there is no event to await).
    deploy_checks.py chart RENDERED.yaml --metrics-from HTTP_ASR HTTP_TTS [--defaults]
        check a `helm template` output: every HPA/ScaledObject names a metric those /metrics export, each
        grace period exceeds preStop + drain + 5 s; with --defaults, each service has a Deployment, a Service,
        a PodDisruptionBudget and an autoscaling/v2 HPA.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import urllib.request
import wave
from pathlib import Path

import yaml
from asr_client import stream as stream_clip

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "tests" / "data" / "asr" / "jfk.wav"
REFERENCE = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"
GRACEFUL_SHUTDOWN_S = 5  # services/common/serve.py: what uvicorn gives open work after the drain


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def stream(args) -> int:
    with wave.open(str(CLIP)) as w:
        audio = w.readframes(w.getnframes())
    result = asyncio.run(stream_clip(args.ws.rstrip("/") + "/v1/stream/asr", audio, speed=args.speed, timeout_s=120))
    out = {"text": result.final_text, "close_code": result.close_code, "finals": len(result.of("final")),
           "errors": result.of("error")}
    text = json.dumps(out)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    heard = words(result.final_text)
    # a drained session ends at the utterance in progress: its start must be right
    ok = heard == REFERENCE or (args.prefix_ok and heard.startswith("and so my fellow"))
    return 0 if ok and result.close_code == args.expect_close else 1


def read_metrics(base: str) -> dict[str, float]:
    text = urllib.request.urlopen(base.rstrip("/") + "/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.split(r"[{ ]", line, maxsplit=1)[0]
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def wait_metric(args) -> int:
    deadline = time.monotonic() + args.timeout_s
    while time.monotonic() < deadline:
        for base in args.bases:
            if read_metrics(base).get(args.name) == args.value:
                print(base)
                return 0
        time.sleep(0.1)
    print(f"no instance reached {args.name} = {args.value}", file=sys.stderr)
    return 1


def chart(args) -> int:
    docs = [d for d in yaml.safe_load_all(Path(args.rendered).read_text()) if d]
    exported = set(read_metrics(args.metrics_from[0])) | set(read_metrics(args.metrics_from[1]))
    problems: list[str] = []
    named: list[str] = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "HorizontalPodAutoscaler":
            assert doc["apiVersion"] == "autoscaling/v2", doc["apiVersion"]
            named += [m["pods"]["metric"]["name"] for m in doc["spec"]["metrics"] if m["type"] == "Pods"]
        if kind == "ScaledObject":
            named += [re.match(r"sum\((\w+)", t["metadata"]["query"]).group(1)
                      for t in doc["spec"]["triggers"] if t["type"] == "prometheus"]
        if kind == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            container = pod["containers"][0]
            env = {e["name"]: e.get("value") for e in container["env"]}
            drain = float(next(v for k, v in env.items() if k.endswith("_SERVER__DRAIN_TIMEOUT_S")))
            pause = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
            if pod["terminationGracePeriodSeconds"] <= pause + drain + GRACEFUL_SHUTDOWN_S:
                problems.append(f"{name}: grace {pod['terminationGracePeriodSeconds']} s <= {pause}+{drain}+5 s")
    for metric in named:
        if metric not in exported:
            problems.append(f"the autoscaler names {metric}, which /metrics does not export")
    if not named:
        problems.append("no autoscaler names a live-session metric")
    if args.defaults:
        for svc in ("asr", "tts"):
            kinds = {d["kind"] for d in docs if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == svc}
            missing = {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} - kinds
            if missing:
                problems.append(f"{svc}: no {', '.join(sorted(missing))}")
            if f"{svc}_sessions_active" not in named:
                problems.append(f"{svc}: the HPA does not scale on {svc}_sessions_active")
    for p in problems:
        print(f"chart: {p}", file=sys.stderr)
    print(f"chart: {args.rendered}: {len(docs)} objects, autoscaling on {sorted(set(named))}")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stream")
    s.add_argument("ws")
    s.add_argument("--speed", type=float, default=0.0)
    s.add_argument("--expect-close", type=int, default=1000)
    s.add_argument("--prefix-ok", action="store_true", help="a drained session may end early: its start passes")
    s.add_argument("--out")
    w = sub.add_parser("wait-metric")
    w.add_argument("bases", nargs="+")
    w.add_argument("--name", required=True)
    w.add_argument("--value", type=float, required=True)
    w.add_argument("--timeout-s", type=float, default=60)
    c = sub.add_parser("chart")
    c.add_argument("rendered")
    c.add_argument("--metrics-from", nargs=2, required=True)
    c.add_argument("--defaults", action="store_true")
    args = parser.parse_args()
    return {"stream": stream, "wait-metric": wait_metric, "chart": chart}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
