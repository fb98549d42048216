#!/usr/bin/env python3
"""A loopback TCP proxy that cuts connections: the dropped socket a resuming client must ride through.

``CutProxy`` accepts connections on 127.0.0.1 and forwards each to one loopback target (nginx's front, or an
instance), copying bytes both ways unchanged. ``cut()`` resets every connection open at that moment on both
sides (an RST, as when a NAT entry is dropped or a middlebox restarts), and records when; connections made
afterwards, the clients' reconnects, are left alone until the next ``cut()``. So one ``cut()`` while every
client streams cuts every client connection exactly once. Two triggers cut once by themselves, at a point of
what the target sends to the clients: ``cut_after(n)`` once it has sent ``n`` more bytes (the middle of a
reply), and ``cut_before(pattern)`` the first time ``pattern`` comes, forwarding only what came before the
WebSocket frame that holds it (a small text frame: its 2-byte header), e.g. between a piece's last audio and
its ``segment_end``. ``connected`` is an event set on each connection made to the target, so a caller waits
for the reconnect instead of sleeping. Standard library only; the tests, ``scripts/bench_resume.py`` and
``scripts/measure_replay.py`` import it, and it runs on its own too::

    scripts/cut_proxy.py --listen 18080 --to 127.0.0.1:8080   # kill -USR1 <pid> cuts every open connection
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import socket
import struct
import sys
import time

CHUNK_BYTES = 65536


def _loopback(host: str) -> str:
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"cut_proxy forwards to loopback only, not {host}")
    return host


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (linger 0) rather than a FIN: the peer sees the connection reset, as on a real drop."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, watch=None, cut=None) -> None:
    """Copy ``reader`` to ``writer``. ``watch(chunk)``, where given, returns what of the chunk to forward and
    whether to ``cut()`` once that is forwarded (the rest of the chunk goes nowhere)."""
    try:
        while chunk := await reader.read(CHUNK_BYTES):
            cut_here = False
            if watch is not None:
                chunk, cut_here = watch(chunk)
            if chunk:
                writer.write(chunk)
                await writer.drain()
            if cut_here:
                cut()
                return
        if writer.can_write_eof():
            writer.write_eof()  # half-close, as TCP does: the other direction may still carry data
    except (ConnectionError, OSError, RuntimeError):
        _reset(writer)


class CutProxy:
    """Forward ``127.0.0.1:port`` (0: a free port) to ``target_host:target_port``; ``cut()`` drops what is open."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (_loopback(target_host), target_port)  # read at each connection: a test may move it
        self.port = port
        self.accepted = 0                     # connections accepted so far
        self.connected = asyncio.Event()      # set on each connection made to the target
        self.cut_at: list[float] = []         # time.time() of each cut()
        self.cut_counts: list[int] = []       # connections each cut() reset
        self.downstream_bytes = 0             # bytes forwarded from the target to the clients, all connections
        self._cut_at_downstream: int | None = None
        self._cut_before: bytes | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def cuts(self) -> int:
        return len(self.cut_at)

    @property
    def ws(self) -> str:
        """The proxy's WebSocket base URL (``ws://127.0.0.1:PORT``)."""
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> "CutProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for pair in list(self._open):
                for w in pair:
                    _reset(w)
            await self._server.wait_closed()

    async def __aenter__(self) -> "CutProxy":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def cut(self) -> int:
        """Reset every connection open now (both sides); return how many were open."""
        pairs = list(self._open)
        self.cut_at.append(time.time())
        self.cut_counts.append(len(pairs))
        for pair in pairs:
            self._open.discard(pair)
            for w in pair:
                _reset(w)
        return len(pairs)

    def cut_after(self, downstream_bytes: int) -> None:
        """Cut once, as soon as the target has sent ``downstream_bytes`` (counted from now) towards the clients:
        a point in the middle of a reply, however fast it is made."""
        self._cut_at_downstream = self.downstream_bytes + downstream_bytes

    def cut_before(self, pattern: bytes) -> None:
        """Cut once, the first time ``pattern`` comes from the target, after forwarding what came before the
        WebSocket frame that holds it (a text frame under 126 bytes, whose header is 2 bytes)."""
        self._cut_before = pattern

    def _downstream(self, chunk: bytes) -> tuple[bytes, bool]:
        """What of a chunk from the target to forward, and whether to cut once it is forwarded."""
        at = chunk.find(self._cut_before) if self._cut_before else -1
        if at >= 0:
            self._cut_before = None
            chunk = chunk[:max(0, at - 2)]
            self.downstream_bytes += len(chunk)
            return chunk, True  # what came before the frame is forwarded, then the cut
        self.downstream_bytes += len(chunk)
        if self._cut_at_downstream is not None and self.downstream_bytes >= self._cut_at_downstream:
            self._cut_at_downstream = None
            return b"", True  # cut at this point: the chunk goes nowhere
        return chunk, False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)  # the target is down: the client sees the refusal as a reset
            return
        pair = (writer, up_writer)
        self._open.add(pair)
        self.connected.set()
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer, self._downstream, self.cut))
        finally:
            self._open.discard(pair)
            for w in pair:
                w.close()


async def _serve(listen_port: int, host: str, port: int) -> None:
    proxy = await CutProxy(port, host, listen_port).start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(f"cut_proxy: cut {proxy.cut()} connections",
                                                          file=sys.stderr, flush=True))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"cut_proxy: 127.0.0.1:{proxy.port} -> {host}:{port}; kill -USR1 cuts every open connection",
          file=sys.stderr, flush=True)
    await stop.wait()
    await proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1 to accept connections on")
    parser.add_argument("--to", required=True, help="loopback HOST:PORT to forward to")
    args = parser.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    asyncio.run(_serve(args.listen, host or "127.0.0.1", int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
