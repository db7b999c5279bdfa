"""The Python time plugstrip spends on one call, without sockets: the profile behind the
request rate (issue 28).

A client connection is served from memory: its reader hands over the same request again
and again, and an in-memory daemon answers each with the bytes dockerd 20.10 sends. What
is left is the work of parsing, routing, hooks and relaying, per call, with no syscall and
no other process sharing the CPU: steady enough to compare two versions of the code
(alternate them, as the rate benchmark does). ``--profile`` adds cProfile's table.

    /opt/plugstrip/bin/python -m bench.call_cost [--calls N] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from plugstrip.proxy.addresses import SocketAddress
from plugstrip.proxy.connection import ClientConnection
from plugstrip.proxy.contract import Call, Peer
from plugstrip.proxy.http1 import ByteReader, ByteWriter
from plugstrip.proxy.server import ProxyServer
from plugstrip.proxy.upstream import Upstream

PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nUser-Agent: Docker-Client/20.10.24 (linux)\r\n\r\n"
PONG = (
    b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nBuilder-Version: 2\r\n"
    b"Cache-Control: no-cache, no-store, must-revalidate\r\nContent-Length: 2\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nDocker-Experimental: false\r\nOstype: linux\r\n"
    b"Pragma: no-cache\r\nServer: Docker/20.10.24+dfsg1 (linux)\r\n"
    b"Date: Mon, 07 Dec 2026 20:00:00 GMT\r\n\r\nOK"
)


class Repeat:
    """A reader that gives ``data`` ``times`` times, then end of file; with ``yields``, it
    lets the loop run others before each read, as a socket with nothing yet to read does."""

    def __init__(self, data: bytes, times: int, yields: bool = False) -> None:
        self.data, self.left, self.yields = data, times, yields

    async def read(self, n: int = -1) -> bytes:
        if self.yields:
            await asyncio.sleep(0)
        if self.left == 0:
            return b""
        self.left -= 1
        return self.data

    def at_eof(self) -> bool:
        return self.left == 0


class Sink:
    """A writer that drops what it is given."""

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class AnsweringDaemon(Upstream):
    """A daemon that answers every request with ``PONG``, from memory."""

    async def open(self) -> tuple[ByteReader, ByteWriter]:
        return Repeat(PONG, 1 << 62), Sink()


class Noop:
    """A pre-hook that changes nothing: a call no shorter path can take."""

    def pre_hook(self, call: Call) -> None:
        pass


async def serve_calls(
    config: str | None, calls: int, profile: cProfile.Profile | None, connections: int = 1
) -> float:
    """Microseconds of Python per call over ``calls`` pings, on ``connections`` clients
    taking turns (one: each call straight after the last)."""
    server = ProxyServer(AnsweringDaemon(SocketAddress.parse("unix:///nowhere")), config)
    each = calls // connections
    conns = [
        ClientConnection(server.shared, Repeat(PING, each, connections > 1), Sink(), Peer("unix"))
        for _ in range(connections)
    ]
    started = time.perf_counter()
    if profile is not None:
        profile.enable()
    await asyncio.gather(*(conn.serve() for conn in conns))
    if profile is not None:
        profile.disable()
    return (time.perf_counter() - started) / (each * connections) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=30000)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top 25")
    parser.add_argument(
        "--connections", type=int, nargs="*", default=[], help="also with this many clients"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hooked = Path(tmp) / "hooked.yml"
        hooked.write_text(
            'endpoints: {"GET /_ping": {pre: [noop]}}\n'
            'adapters: {noop: {python: "bench.call_cost:Noop"}}\n'
        )
        for label, config in [("pass-through", None), ("through a no-op pre-hook", str(hooked))]:
            uvloop.run(serve_calls(config, 2000, None))  # warm up
            cost = uvloop.run(serve_calls(config, args.calls, None))
            print(f"GET /_ping, {label}: {cost:.1f} us of Python per call")
            for connections in args.connections:
                cost = uvloop.run(serve_calls(config, args.calls, None, connections))
                print(f"  {connections} clients taking turns: {cost:.1f} us per call")
            if args.profile:
                profile = cProfile.Profile()
                uvloop.run(serve_calls(config, args.calls // 3, profile))
                pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
