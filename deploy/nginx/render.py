#!/usr/bin/env python3
"""Render the nginx configuration for N ASR and M TTS instances (standard library only).

Two shapes of the same routing:

* ``site`` (default): an ``http``-context file for a system nginx
  (``/etc/nginx/conf.d/voice-services.conf``); ``deploy/nginx/voice-services.conf``
  is this output for 2 + 2 instances on loopback.
* ``--standalone RUN_DIR``: a whole ``nginx.conf`` that runs as an unprivileged
  foreground process (``nginx -p RUN_DIR -c nginx.conf``) with its pid, logs and
  temp files in RUN_DIR; ``scripts/start_all.sh`` and the cluster tests use it.

Examples::

    deploy/nginx/render.py --asr 127.0.0.1:8001,127.0.0.1:8011 --tts 127.0.0.1:8002,127.0.0.1:8012 \\
        > /etc/nginx/conf.d/voice-services.conf
    deploy/nginx/render.py --listen 127.0.0.1:8080 --asr 127.0.0.1:8001 --tts 127.0.0.1:8002 \\
        --standalone /tmp/voice-nginx > /tmp/voice-nginx/nginx.conf

Routing and its reasons are explained in LOAD_BALANCING.md.
"""

from __future__ import annotations

import argparse
import sys

BALANCER_HEADER = "X-Voice-Balancer"  # services/common/serve.py: refuse a full/draining handshake with 503


def _servers(addresses: list[str], max_fails: int, fail_timeout_s: int) -> str:
    return "\n".join(f"    server {a} max_fails={max_fails} fail_timeout={fail_timeout_s}s;" for a in addresses)


ACCESS_LOG = "/var/log/nginx/voice-services.access.log"


def render_site(asr: list[str], tts: list[str], *, listen: str = "8080", max_fails: int = 3,
                fail_timeout_s: int = 10, stream_timeout_s: int = 3600, asr_body_mb: int = 101,
                tts_body_mb: int = 21, file_timeout_s: int = 900, access_log: str = ACCESS_LOG) -> str:
    """The ``http``-context part: upstreams, the upgrade map and one ``server``."""
    if not asr or not tts:
        raise ValueError("at least one ASR and one TTS instance are needed")
    proxy_common = f"""        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header {BALANCER_HEADER} 1;
        proxy_http_version 1.1;
        proxy_connect_timeout 3s;"""
    websocket = f"""{proxy_common}
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $voice_connection_upgrade;
        proxy_buffering off;
        proxy_read_timeout {stream_timeout_s}s;
        proxy_send_timeout {stream_timeout_s}s;
        # A refused handshake (503 from a full or draining instance) or a dead instance: try the next one.
        proxy_next_upstream error timeout http_502 http_503;
        proxy_next_upstream_tries 0;"""
    http_retry = """        # A POST is never replayed once an instance has it (a timeout may mean it is still working there):
        # only a failed connection moves on; a draining or full instance's 503 reaches the client with
        # Retry-After.
        proxy_next_upstream error timeout http_502 http_503;
        proxy_next_upstream_timeout 30s;"""
    return f"""# Voice services behind nginx: {len(asr)} ASR + {len(tts)} TTS instances.
# Rendered by deploy/nginx/render.py; LOAD_BALANCING.md explains every choice.

map $http_upgrade $voice_connection_upgrade {{
    default upgrade;
    ''      '';
}}

# The path without its query string: a browser's ?api_key=... never reaches the access log.
log_format voice_services '$remote_addr [$time_local] "$request_method $uri $server_protocol" $status '
                          '$body_bytes_sent $request_time "$http_user_agent" $upstream_addr';

upstream voice_asr {{
    zone voice_asr 64k;          # shared by all workers: least_conn and failures counted once
    least_conn;                  # long streams: fewest open connections wins
    # Passive health: a server whose connections fail (refused: it is down or restarting) or answer 502/503
    # max_fails times within fail_timeout is skipped for fail_timeout, then tried again; each failed try
    # moves on to the next server (proxy_next_upstream), so the client never sees it.
{_servers(asr, max_fails, fail_timeout_s)}
    keepalive 16;
}}

upstream voice_tts {{
    zone voice_tts 64k;
    least_conn;
{_servers(tts, max_fails, fail_timeout_s)}
    keepalive 16;
}}

server {{
    listen {listen};
    server_name _;
    client_body_buffer_size 1m;
    access_log {access_log} voice_services;

    # nginx itself is up (the instances' /health, /ready and /metrics are read on their own ports).
    location = /health {{
        default_type application/json;
        return 200 '{{"status":"ok"}}';
    }}

    # ---- ASR -------------------------------------------------------------------------------
    # Our stream and its compatible dialects (Deepgram /v1/listen, OpenAI Realtime /v1/realtime).
    location ~ ^/v1/(stream/asr|listen|realtime)$ {{
        proxy_pass http://voice_asr;
{websocket}
    }}
    location ~ ^/v1/(transcribe|audio/transcriptions)$ {{
        proxy_pass http://voice_asr;
{proxy_common}
        proxy_set_header Connection "";
        client_max_body_size {asr_body_mb}m;      # server.max_upload_bytes (100 MiB) + form overhead
        proxy_read_timeout {file_timeout_s}s;     # long files are transcribed before the answer starts
        proxy_send_timeout {file_timeout_s}s;
{http_retry}
    }}

    # ---- TTS (every instance serves every voice: the voice store is shared) ----------------
    # Our stream and Deepgram's /v1/speak (a WebSocket, or a POST that streams audio back).
    location ~ ^/v1/(stream/tts|speak)$ {{
        proxy_pass http://voice_tts;
{websocket}
        client_max_body_size 1m;
    }}
    location ~ ^/v1/(synthesize|audio/speech)$ {{
        proxy_pass http://voice_tts;
{proxy_common}
        proxy_set_header Connection "";
        proxy_buffering off;                      # audio streams out as it is made
        proxy_read_timeout 300s;
        client_max_body_size 1m;
{http_retry}
    }}
    location /v1/voices {{
        proxy_pass http://voice_tts;
{proxy_common}
        proxy_set_header Connection "";
        client_max_body_size {tts_body_mb}m;      # server.max_upload_bytes (20 MiB) + form overhead
        proxy_read_timeout 120s;
        # Creating a voice is not idempotent: POST is not retried after it reached an instance.
        proxy_next_upstream error timeout http_502 http_503;
    }}

    location / {{
        default_type application/json;
        return 404 '{{"error":{{"code":"not_found","message":"no such route"}}}}';
    }}
}}
"""


def render_standalone(site: str, run_dir: str, *, workers: int = 1, user: str | None = None,
                      shutdown_timeout_s: int = 60) -> str:
    """A whole ``nginx.conf`` for an unprivileged foreground nginx whose files all live in ``run_dir``.

    On SIGQUIT nginx stops listening and keeps its open connections until they close: the streams of draining
    instances get their last finals and their 1001 through it. ``shutdown_timeout_s`` bounds that wait; it
    exceeds the longest drain (ASR ``drain_timeout_s`` 30 s + 5 s)."""
    # As root, nginx would switch its workers to "nobody", who cannot reach a private run dir: name the user.
    user_line = f"user {user};\n" if user else ""
    indented = "\n".join(("    " + line) if line else "" for line in site.splitlines())
    return f"""# Foreground nginx for the voice services (rendered by deploy/nginx/render.py --standalone).
daemon off;
{user_line}worker_processes {workers};
pid {run_dir}/nginx.pid;
error_log {run_dir}/error.log warn;
worker_shutdown_timeout {shutdown_timeout_s}s;

events {{
    worker_connections 4096;
}}

http {{
    client_body_temp_path {run_dir}/client_body;
    proxy_temp_path {run_dir}/proxy;
    fastcgi_temp_path {run_dir}/fastcgi;
    uwsgi_temp_path {run_dir}/uwsgi;
    scgi_temp_path {run_dir}/scgi;
    default_type application/octet-stream;

{indented}
}}
"""


def _addresses(value: str) -> list[str]:
    out = []
    for item in filter(None, (v.strip() for v in value.split(","))):
        out.append(item if ":" in item else f"127.0.0.1:{item}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--asr", required=True, help="ASR instances, comma-separated HOST:PORT (or PORT: loopback)")
    parser.add_argument("--tts", required=True, help="TTS instances, comma-separated HOST:PORT (or PORT: loopback)")
    parser.add_argument("--listen", default="8080", help="nginx listen directive value (default 8080)")
    parser.add_argument("--max-fails", type=int, default=3)
    parser.add_argument("--fail-timeout", type=int, default=10, help="seconds an instance stays out after max-fails")
    parser.add_argument("--stream-timeout", type=int, default=3600, help="seconds a silent stream may stay open")
    parser.add_argument("--standalone", metavar="RUN_DIR", help="render a whole foreground nginx.conf using RUN_DIR")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (--standalone only)")
    parser.add_argument("--user", help="worker user (--standalone, when nginx starts as root; e.g. root)")
    args = parser.parse_args(argv)
    site = render_site(_addresses(args.asr), _addresses(args.tts), listen=args.listen, max_fails=args.max_fails,
                       fail_timeout_s=args.fail_timeout, stream_timeout_s=args.stream_timeout,
                       access_log=f"{args.standalone}/access.log" if args.standalone else ACCESS_LOG)
    sys.stdout.write(render_standalone(site, args.standalone, workers=args.workers, user=args.user) if args.standalone else site)
    return 0


if __name__ == "__main__":
    sys.exit(main())
