#!/usr/bin/env python3
"""Serve the browser client (``website_client.html`` and ``web/``) over HTTP on loopback.

    python examples/serve_web.py [--port 8000] [--host 127.0.0.1]
    # then open http://127.0.0.1:8000/  (or ?asr=ws://HOST:8001/v1/stream/asr&tts=ws://HOST:8002/v1/stream/tts)

Browsers give the microphone and AudioWorklets only to secure pages: https,
or http on localhost / 127.0.0.1 as here. To use the page from another machine,
put it behind https (any reverse proxy with a certificate) and point its URL
inputs at wss:// addresses of the services. Only the page's own files are
served; ``/`` redirects to the page.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVED = {"/website_client.html", "/web/mic-worklet.js"}


class PageHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript", ".html": "text/html"}

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            self.send_response(302)
            query = self.path[1:] if self.path.startswith("/?") else ""
            self.send_header("Location", "/website_client.html" + query)
            self.end_headers()
            return
        if path == "/favicon.ico":
            self.send_response(204)
            self.end_headers()
            return
        if path not in SERVED:
            self.send_error(404, "only the browser client is served here")
            return
        super().do_GET()

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), partial(PageHandler, directory=str(HERE)))
    print(f"browser client: http://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
