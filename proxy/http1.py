"""One side of the proxy: an h11 state machine over an asyncio stream.

h11 gives strict framing (bad chunking, oversized heads, duplicate Content-Length are
errors) and explicit protocol switching, with the bytes read past the switch available
as ``trailing_data`` so nothing a hijacked peer already sent is lost.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Protocol

import h11

READ_SIZE = 1 << 16
# Go's net/http (dockerd) accepts 1 MiB of headers; registry auth headers can be large.
MAX_HEAD = 1 << 20


class ByteReader(Protocol):
    """What the proxy reads from: an asyncio StreamReader, or the TLS layer's reader."""

    async def read(self, n: int = -1) -> bytes: ...

    def at_eof(self) -> bool: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def can_write_eof(self) -> bool: ...

    def write_eof(self) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


class H11Stream:
    def __init__(self, role: Any, reader: ByteReader, writer: ByteWriter) -> None:
        self.conn = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)
        self.reader = reader
        self.writer = writer

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.reader.read(READ_SIZE))

    async def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def write_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    @property
    def trailing(self) -> bytes:
        return bytes(self.conn.trailing_data[0])

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


def encode_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    """A request head in the client's own header order and spelling (h11 would move Host)."""
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_response_head(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    if not reason:
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    lines = [f"HTTP/1.1 {status} {reason}".rstrip()] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def pipe(reader: ByteReader, writer: ByteWriter) -> None:
    """Copy until EOF, then pass the half-close on (attach with stdin closed keeps reading)."""
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if not writer.is_closing():
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (OSError, RuntimeError):
                pass
