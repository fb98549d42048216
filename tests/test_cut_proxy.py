"""scripts/cut_proxy.py on loopback: bytes pass unchanged both ways, a cut resets every connection open at that
moment (the client sees a reset, not a clean end), later connections pass again, and a target that is down
refuses through the proxy."""

from __future__ import annotations

import asyncio
import os

import pytest

from conftest import free_port, script_modules

with script_modules("cut_proxy") as (cut_proxy,):
    pass


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _round_trip(port: int, payload: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    assert await reader.readexactly(len(payload)) == payload
    return reader, writer


def test_bytes_pass_a_cut_resets_open_connections_once_and_new_ones_pass():
    async def scenario():
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        async with cut_proxy.CutProxy(server.sockets[0].getsockname()[1]) as proxy:
            payload = os.urandom(200_000)
            conns = [await _round_trip(proxy.port, payload) for _ in range(3)]
            assert proxy.open_connections == 3 and proxy.accepted == 3
            assert proxy.cut() == 3 and proxy.cut_counts == [3] and len(proxy.cut_at) == 1
            for reader, writer in conns:
                with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                    await asyncio.wait_for(reader.readexactly(1), 10)
                writer.close()
            reader, writer = await _round_trip(proxy.port, b"after the cut")  # a reconnect is not cut
            assert proxy.open_connections == 1
            writer.write_eof()  # a clean end passes through as a clean end
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


def test_cut_after_cuts_once_in_the_middle_of_what_the_target_sends():
    async def scenario():
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        async with cut_proxy.CutProxy(server.sockets[0].getsockname()[1]) as proxy:
            reader, writer = await _round_trip(proxy.port, b"x" * 1000)
            proxy.cut_after(150_000)
            writer.write(b"y" * 400_000)
            received = 0
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                while True:
                    chunk = await asyncio.wait_for(reader.read(65536), 10)
                    if not chunk:
                        raise asyncio.IncompleteReadError(b"", None)
                    received += len(chunk)
            writer.close()
            assert proxy.cut_counts == [1] and 0 < received < 400_000
            await _round_trip(proxy.port, b"again")  # disarmed after one cut
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


def test_cut_before_forwards_up_to_the_frame_that_holds_the_pattern_and_connected_is_set():
    async def scenario():
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        async with cut_proxy.CutProxy(server.sockets[0].getsockname()[1]) as proxy:
            reader, writer = await _round_trip(proxy.port, b"first")
            assert proxy.connected.is_set() and proxy.cuts == 0
            proxy.cut_before(b"MARK")
            writer.write(b"before" + b"\x81\x04MARK" + b"after")  # a 2-byte frame header, then the pattern
            assert await asyncio.wait_for(reader.readexactly(6), 10) == b"before"
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 10)
            writer.close()
            assert proxy.cuts == 1
            proxy.connected.clear()
            await _round_trip(proxy.port, b"MARK again")  # disarmed after one cut
            assert proxy.connected.is_set() and proxy.accepted == 2
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())


def test_a_target_that_is_down_is_refused_through_the_proxy_and_only_loopback_is_allowed():
    async def scenario():
        async with cut_proxy.CutProxy(free_port()) as proxy:  # nothing listens there
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 10)
            writer.close()

    asyncio.run(scenario())
    with pytest.raises(ValueError):
        cut_proxy.CutProxy(80, "192.0.2.1")
