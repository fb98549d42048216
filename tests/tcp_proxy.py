"""A TCP proxy for tests that can cut every connection through it, as a dropped network path does.

:class:`CuttableProxy` listens on a free loopback port and pipes each accepted
connection to ``upstream``; :meth:`CuttableProxy.cut` aborts every open one
(both sides see a reset, as after a Wi-Fi drop or a dead load balancer) while
the proxy keeps accepting new ones. ``connected`` is an event set on each new
connection, so a test waits for the reconnect instead of sleeping. With
``cut_before`` set, the proxy cuts by itself the first time those bytes come from
upstream, forwarding only what came before the WebSocket frame that holds them
(a small text frame: its 2-byte header), so a test can cut at an exact point of
a session, e.g. between a piece's last audio and its ``segment_end``.
"""

from __future__ import annotations

import asyncio
import contextlib


class CuttableProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections = 0  # accepted so far
        self.cuts = 0
        self.connected = asyncio.Event()
        self.cut_before: bytes | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> "CuttableProxy":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._abort_all()
        await self._server.wait_closed()

    def cut(self) -> None:
        """Abort every connection open now (new ones are still accepted)."""
        self.cuts += 1
        self._abort_all()

    def _abort_all(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        self.connections += 1
        self.connected.set()
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer, downstream=True))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, downstream: bool = False) -> None:
        try:
            while data := await reader.read(65536):
                at = data.find(self.cut_before) if downstream and self.cut_before else -1
                if at >= 0:
                    self.cut_before = None
                    writer.write(data[:max(0, at - 2)])
                    await writer.drain()
                    self.cut()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._open.discard(writer)
            writer.transport.abort()  # one side gone: so is the other (a cut looks the same from both ends)
            with contextlib.suppress(Exception):
                writer.close()
