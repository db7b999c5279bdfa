"""Load as the daemon takes it: a burst of clients connecting at once all get in, and the
proxy is back to its resting memory and descriptors once they go."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Plugstrip, free_port, wait_for

CLIENTS = 1000
Opener = Callable[[], "asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]"]


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)


async def _client(open_conn: Opener) -> tuple[bytes, bytes, asyncio.StreamWriter]:
    """A stream (GET /events, kept open) and then a call on a second connection."""
    r, stream = await open_conn()
    stream.write(b"GET /v1.41/events HTTP/1.1\r\nHost: docker\r\n\r\n")
    events_head = await _head(r)
    r2, call = await open_conn()
    call.write(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(r2.read(), 60)
    call.close()
    return events_head, answer, stream


async def _burst(open_conn: Opener) -> list[str]:
    """CLIENTS clients at once; returns what went wrong, one line per client."""
    results = await asyncio.gather(
        *(_client(open_conn) for _ in range(CLIENTS)), return_exceptions=True
    )
    failures: list[str] = []
    streams: list[asyncio.StreamWriter] = []
    for i, res in enumerate(results):
        if isinstance(res, BaseException):
            failures.append(f"client {i}: {type(res).__name__}: {res}")
            continue
        events_head, answer, stream = res
        streams.append(stream)
        if not events_head.startswith(b"HTTP/1.1 200"):
            failures.append(f"client {i}: events answered {events_head[:40]!r}")
        if not (answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"OK")):
            failures.append(f"client {i}: ping answered {answer[:40]!r}")
    for stream in streams:
        stream.close()
    await asyncio.gather(*(s.wait_closed() for s in streams), return_exceptions=True)
    return failures


@pytest.mark.parametrize("scheme", ["unix", "tcp"])
async def test_a_thousand_clients_at_once(plugstrip_factory: object, scheme: str) -> None:
    port = free_port()
    ps: Plugstrip = plugstrip_factory(  # type: ignore[operator]
        extra=["--listen", f"tcp://127.0.0.1:{port}", "--no-networks"]
    )

    def open_conn() -> asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        if scheme == "unix":
            return asyncio.ensure_future(asyncio.open_unix_connection(ps.socket))
        return asyncio.ensure_future(asyncio.open_connection("127.0.0.1", port))

    pid = ps.proc.pid
    await asyncio.sleep(0.5)
    resting_fds = _fds(pid)
    assert await _burst(open_conn) == []  # the first burst also warms the allocator up
    await asyncio.to_thread(
        wait_for, lambda: _fds(pid) <= resting_fds, 30, "descriptors not released"
    )
    # A leak of a few KiB per connection shows as megabytes over every burst; the
    # allocator settling (a full run once grew 6 MiB over the second burst) does not
    # repeat, so up to three bursts are measured and one must not grow.
    growth = []
    for _ in range(3):
        before = _rss_kib(pid)
        failures = await _burst(open_conn)
        assert failures == [], f"{len(failures)} of {CLIENTS} failed: {failures[:5]}"
        await asyncio.to_thread(
            wait_for, lambda: _fds(pid) <= resting_fds, 30, "descriptors not released"
        )
        growth.append(_rss_kib(pid) - before)
        if growth[-1] < 4096:
            break
    assert growth[-1] < 4096, f"RSS grew by {growth} KiB over consecutive bursts"
