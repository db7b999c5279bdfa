"""A request body relayed between two plain sockets, off the event loop.

Through the streams, each read of an upload is a new bytes object copied out of the
transport, into the reader's buffer and out again, and each wait for the socket costs the
loop two epoll changes (bench: a 300 MB `docker cp` in made 13,000 of them). Here the
sockets are lent to a thread instead: the client's transport stops reading, what its
stream had read ahead is handed over, and the thread moves the body with blocking waits
in poll(2): a body of known length with splice(2) (the bytes stay in the kernel), a
chunked one through one buffer of its own, read only for its framing. Then the transport
reads on from where the thread stopped. The thread works on duplicates of the
descriptors, which uvloop's transports own.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
from dataclasses import dataclass
from typing import Any

from plugstrip.proxy.chunked import BodyEnd, LengthEnd
from plugstrip.proxy.http1 import RELAY_READ_SIZE, ByteReader, ByteWriter
from plugstrip.proxy.splice import splice_exactly, wait_for


@dataclass(frozen=True)
class PlainSockets:
    """A client's stream (``reader``, its connection's writer ``reader_side``) and the
    upstream's writer, each a socket under asyncio streams."""

    reader: asyncio.StreamReader
    reader_side: asyncio.StreamWriter
    writer: asyncio.StreamWriter


def plain_sockets(
    reader: ByteReader, reader_side: ByteWriter, writer: ByteWriter
) -> PlainSockets | None:
    """The ends as plain sockets, or None if one is not (TLS, a test's pipe)."""
    if (
        isinstance(reader, asyncio.StreamReader)
        and isinstance(reader_side, asyncio.StreamWriter)
        and isinstance(writer, asyncio.StreamWriter)
        and reader_side.get_extra_info("socket") is not None
        and writer.get_extra_info("socket") is not None
    ):
        return PlainSockets(reader, reader_side, writer)
    return None


async def relay_body(ends: PlainSockets, end_of: BodyEnd, first: bytes) -> bytes:
    """Move a body from the client to the upstream: ``first`` (read with its head), then
    the rest until ``end_of`` says it ended. Returns what was read past its end: the start
    of the next request."""
    reader, writer = ends.reader, ends.writer
    transport: Any = reader._transport  # type: ignore[attr-defined]
    transport.pause_reading()
    ahead = b""
    if reader._buffer:  # type: ignore[attr-defined]  # read ahead by the stream
        ahead = await reader.read(len(reader._buffer))  # type: ignore[attr-defined]
        transport.pause_reading()  # reading it may have let the transport go on
    out = writer.transport
    high = out.get_write_buffer_limits()[1]
    out.set_write_buffer_limits(high=0)  # what the stream still holds goes out first
    try:
        await writer.drain()
    finally:
        out.set_write_buffer_limits(high=high)
    src, dst = _duplicate(ends.reader_side), _duplicate(writer)
    loop = asyncio.get_running_loop()
    moved: asyncio.Future[bytes] = loop.create_future()

    def run() -> None:
        rest, error = b"", None
        try:
            rest = _move(src, dst, end_of, first + ahead)
        except BaseException as exc:  # handed to the loop, raised there
            error = exc
        try:
            loop.call_soon_threadsafe(_settle, moved, rest, error)
        except RuntimeError:
            pass  # the loop is gone: plugstrip is stopping

    # A thread of its own, not the loop's executor: uploads last long, and as many may
    # run at once as clients send them.
    threading.Thread(target=run, name="plugstrip-upload", daemon=True).start()
    try:
        return await asyncio.shield(moved)
    except asyncio.CancelledError:
        for s in (src, dst):  # wake the thread: the connection is ending anyway
            _shutdown(s)
        await asyncio.wait([moved], timeout=2)  # its descriptors are closed below
        if moved.done():
            moved.exception()  # the error it ended with is the cancel's doing
        raise
    finally:
        src.close()
        dst.close()
        if not getattr(reader, "_paused", False) and not transport.is_closing():
            transport.resume_reading()


def _settle(fut: asyncio.Future[bytes], rest: bytes, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(rest)


def _duplicate(writer: ByteWriter) -> socket.socket:
    sock = writer.get_extra_info("socket")
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    dup.setblocking(False)
    return dup


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _move(src: socket.socket, dst: socket.socket, end_of: BodyEnd, first: bytes) -> bytes:
    data: bytes | bytearray = first
    size = len(data)
    buf = bytearray(RELAY_READ_SIZE)
    while True:
        if size:
            end = end_of.feed(data, size)
            _send_all(dst, memoryview(data)[: size if end is None else end])
            if end is not None:
                return bytes(data[end:size])
        if isinstance(end_of, LengthEnd) and hasattr(os, "splice"):
            if splice_exactly(src.fileno(), dst.fileno(), end_of.left) < end_of.left:
                raise ConnectionError("client closed in the middle of a request body")
            return b""
        size = _recv_into(src, memoryview(buf))
        if not size:
            raise ConnectionError("client closed in the middle of a request body")
        data = buf


def _recv_into(sock: socket.socket, view: memoryview) -> int:
    while True:
        try:
            return sock.recv_into(view)
        except BlockingIOError:
            wait_for(sock.fileno(), select.POLLIN)


def _send_all(sock: socket.socket, view: memoryview) -> None:
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            wait_for(sock.fileno(), select.POLLOUT)
