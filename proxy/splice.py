"""A hijacked connection as a pipe in the kernel: splice(2) moves the bytes from one socket
to the other through a pipe, so they never reach Python.

After the 101 (or the legacy 200) an attach or exec session is bytes both ways until both
sides are done. For plain sockets (not TLS), both asyncio transports stop reading and a
thread per direction splices, waiting in poll(2); an end of input is passed on as a
half-close, as the daemon expects when a client closes stdin. uvloop owns each socket's
descriptor while the transport lives, so the threads work on the same open sockets and
the transports close them at the end.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
from typing import Any

from plugstrip.proxy.http1 import ByteReader, ByteWriter

_CHUNK = 1 << 20
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def spliceable(reader: ByteReader, writer: ByteWriter) -> bool:
    """A plain socket (not the TLS layer's streams) whose read-ahead buffer is empty."""
    if not hasattr(os, "splice"):
        return False
    if not isinstance(reader, asyncio.StreamReader) or not isinstance(writer, asyncio.StreamWriter):
        return False
    buffered: Any = getattr(reader, "_buffer", None)  # asyncio's read-ahead, not public
    sock = writer.get_extra_info("socket")
    return sock is not None and buffered is not None and not buffered and not reader.at_eof()


def wait_for(fd: int, event: int) -> None:
    """Block until ``fd`` is ready for ``event`` (or hung up)."""
    poller = select.poll()
    poller.register(fd, event | select.POLLHUP | select.POLLERR)
    poller.poll()


def _splice_in(src: int, w: int, most: int) -> int:
    """Up to ``most`` bytes from ``src`` into the pipe; 0 at EOF."""
    while True:
        try:
            return os.splice(src, w, most, flags=_FLAGS)
        except BlockingIOError:
            wait_for(src, select.POLLIN)


def _splice_out(r: int, dst: int, n: int) -> None:
    """All ``n`` bytes in the pipe to ``dst``."""
    while n:
        try:
            n -= os.splice(r, dst, n, flags=_FLAGS)
        except BlockingIOError:
            wait_for(dst, select.POLLOUT)


def move(src: int, dst: int, dst_sock: socket.socket) -> None:
    """Everything from ``src`` to ``dst`` until EOF, then a half-close of ``dst``."""
    r, w = os.pipe()
    try:
        while n := _splice_in(src, w, _CHUNK):
            _splice_out(r, dst, n)
    except OSError:
        pass  # a peer reset: the other direction ends on its own
    finally:
        os.close(r)
        os.close(w)
        try:
            dst_sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def splice_exactly(src: int, dst: int, count: int) -> int:
    """``count`` bytes from ``src`` to ``dst`` (fewer if ``src`` ends first): how many."""
    r, w = os.pipe()
    moved = 0
    try:
        while moved < count and (n := _splice_in(src, w, min(_CHUNK, count - moved))):
            _splice_out(r, dst, n)
            moved += n
    finally:
        os.close(r)
        os.close(w)
    return moved


async def splice_pipe(
    client: tuple[ByteReader, ByteWriter], upstream: tuple[ByteReader, ByteWriter]
) -> None:
    """Both directions in the kernel until both have ended."""
    loop = asyncio.get_running_loop()
    socks = []
    for _, writer in (client, upstream):
        transport: Any = getattr(writer, "transport", None)
        if transport is not None:
            transport.pause_reading()
        sock = writer.get_extra_info("socket")
        # The transport's own socket, borrowed: detached again below, never closed here.
        socks.append(socket.socket(fileno=sock.fileno()))
    done: list[asyncio.Future[None]] = []
    try:
        for src, dst in ((socks[0], socks[1]), (socks[1], socks[0])):
            fut: asyncio.Future[None] = loop.create_future()

            def run(src: socket.socket = src, dst: socket.socket = dst, fut: Any = fut) -> None:
                try:
                    move(src.fileno(), dst.fileno(), dst)
                finally:
                    loop.call_soon_threadsafe(fut.set_result, None)

            threading.Thread(target=run, name="plugstrip-splice", daemon=True).start()
            done.append(fut)
        await asyncio.gather(*done)
    finally:
        if not all(f.done() for f in done):  # cancelled (shutdown): wake the threads up
            for s in socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            await asyncio.wait(done, timeout=2)
        for s in socks:
            s.detach()
