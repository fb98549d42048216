"""A real service app served by uvicorn on a free loopback port, in a thread of the test process.

The fault-isolation tests need the running service's objects in reach (to wrap
the third-party model objects the engines call) while clients talk to it over
real sockets; this is the in-process twin of ``conftest.ServiceProcess``.
"""

from __future__ import annotations

import socket

import uvicorn

from conftest import Loopback, ThreadedServer


class InProcessServer(Loopback):
    def __init__(self, app, *, start_timeout_s: float = 120.0, ping_interval_s: float = 20.0,
                 ping_timeout_s: float = 20.0, send_buffer_bytes: int | None = None) -> None:
        self.app = app
        # The listening socket is ours: accepted connections inherit its SO_SNDBUF, so a test can keep the
        # kernel from absorbing megabytes of a slow reader's data (what is left is the process's own buffering).
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if send_buffer_bytes is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.start_timeout_s = start_timeout_s
        self.server = ThreadedServer(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    log_level="warning", ws_ping_interval=ping_interval_s,
                                                    ws_ping_timeout=ping_timeout_s),
                                     sockets=[self.socket], start_timeout_s=start_timeout_s)

    def __enter__(self) -> "InProcessServer":
        self.server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)
        self.socket.close()

    @property
    def alive(self) -> bool:
        return self.server.thread.is_alive() and not self.server.should_exit

    @property
    def runtime(self):
        return self.app.state.runtime
