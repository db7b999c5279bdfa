"""Request bodies moved between plain sockets off the loop (proxy/bulk.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from plugstrip.proxy.bulk import plain_sockets, relay_body
from plugstrip.proxy.chunked import ChunkedEnd, LengthEnd

pytestmark = pytest.mark.unit


async def _streams() -> tuple[Any, Any]:
    ours, theirs = socket.socketpair()
    return await asyncio.open_connection(sock=ours), await asyncio.open_connection(sock=theirs)


async def _relay_pair(end_of: Any) -> tuple[Any, Any, asyncio.Task[bytes]]:
    """A client and a daemon end, and a body relay between them already started."""
    (c_reader, c_writer), client = await _streams()
    (_, u_writer), daemon = await _streams()
    ends = plain_sockets(c_reader, c_writer, u_writer)
    assert ends is not None
    task = asyncio.create_task(relay_body(ends, end_of, b""))
    return client, daemon, task


async def test_many_uploads_at_once_each_moves_without_waiting_for_the_others() -> None:
    # More than any thread pool the loop would have on this machine: only the last one
    # gets its body; the others wait for theirs, which never comes during the test.
    pairs = [await _relay_pair(LengthEnd(5)) for _ in range(40)]
    client, daemon, task = pairs[-1]
    client[1].write(b"helloNEXT")
    assert await asyncio.wait_for(task, 2) == b""  # a length is never read past
    assert await asyncio.wait_for(daemon[0].readexactly(5), 2) == b"hello"
    for client, _, task in pairs[:-1]:
        client[1].close()  # the client goes: its relay ends with an error
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(task, 2)


async def test_a_chunked_body_hands_back_what_came_after_it() -> None:
    client, daemon, task = await _relay_pair(ChunkedEnd())
    client[1].write(b"3\r\nabc\r\n0\r\n\r\nGET /")
    assert await asyncio.wait_for(task, 2) == b"GET /"
    assert await asyncio.wait_for(daemon[0].readexactly(13), 2) == b"3\r\nabc\r\n0\r\n\r\n"


async def test_a_cancelled_relay_lets_its_thread_go() -> None:
    _, _, task = await _relay_pair(LengthEnd(5))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 3)
    # The cancel woke the thread and waited for its answer: it ends, not left blocked
    # on the sockets (it may still be returning from its last line).
    for thread in [t for t in threading.enumerate() if t.name == "plugstrip-upload"]:
        thread.join(1)
        assert not thread.is_alive()
