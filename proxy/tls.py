"""TLS for listeners and the upstream, with dockerd's meaning of --tls / --tlsverify.

asyncio's own TLS transport closes the whole connection when the peer sends close_notify,
but Go's ``tls.Conn.CloseWrite`` (which the docker CLI calls on every attach and exec, even
without stdin) sends exactly that and then waits for the output. So TLS here is a thin
layer over ``ssl.SSLObject`` and memory BIOs: a peer's close_notify reads as EOF while we
keep writing, and our ``write_eof`` sends our own close_notify. Reads pull ciphertext on
demand, so TCP flow control still reaches the peer.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

HANDSHAKE_TIMEOUT = 30.0
_READ = 1 << 16


@dataclass(frozen=True)
class TlsFiles:
    verify: bool
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """--tlsverify: client certificates are required and checked against --tlscacert."""
    if not files.cert or not files.key:
        raise ValueError("TLS on a listener needs --tlscert and --tlskey")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(files.cert, files.key)
    if files.verify:
        if not files.cacert:
            raise ValueError("--tlsverify needs --tlscacert")
        ctx.load_verify_locations(files.cacert)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """To a TLS daemon: the daemon's certificate is checked unless verify is off."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.cacert)
    if not files.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if files.cert and files.key:
        ctx.load_cert_chain(files.cert, files.key)
    return ctx


class _TlsChannel:
    def __init__(
        self,
        obj: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.obj, self.incoming, self.outgoing = obj, incoming, outgoing
        self.raw_reader, self.raw_writer = reader, writer

    def flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.raw_writer.write(data)

    async def pull(self) -> bool:
        """More ciphertext from the peer; False at a (ragged) end of the TCP stream."""
        data = await self.raw_reader.read(_READ)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True


class TlsReader:
    def __init__(self, channel: _TlsChannel) -> None:
        self._ch = channel
        self._eof = False

    async def read(self, n: int = -1) -> bytes:
        size = _READ if n < 0 else n
        while not self._eof:
            try:
                data = self._ch.obj.read(size)
            except ssl.SSLWantReadError:
                self._ch.flush()  # TLS 1.3 may have something to say (tickets, key update)
                if not await self._ch.pull():
                    self._eof = True
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""
            if not data:  # close_notify: the peer is done writing; we are not
                self._eof = True
            return data
        return b""

    def at_eof(self) -> bool:
        return self._eof


class TlsWriter:
    def __init__(self, channel: _TlsChannel) -> None:
        self._ch = channel
        self._shut = False

    def write(self, data: bytes) -> None:
        self._ch.obj.write(data)
        self._ch.flush()

    async def drain(self) -> None:
        await self._ch.raw_writer.drain()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._shut:
            return
        self._shut = True
        try:
            self._ch.obj.unwrap()  # sends close_notify; reading goes on
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass
        self._ch.flush()

    def close(self) -> None:
        self._ch.raw_writer.close()

    def is_closing(self) -> bool:
        return self._ch.raw_writer.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peercert":
            return self._ch.obj.getpeercert()
        if name == "ssl_object":
            return self._ch.obj
        return self._ch.raw_writer.get_extra_info(name, default)


async def wrap(
    ctx: ssl.SSLContext,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    server_side: bool,
    server_hostname: str | None = None,
) -> tuple[TlsReader, TlsWriter]:
    """Handshake over an open TCP stream; raises ssl.SSLError or TimeoutError on failure."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=server_hostname)
    channel = _TlsChannel(obj, incoming, outgoing, reader, writer)

    async def handshake() -> None:
        while True:
            try:
                obj.do_handshake()
                channel.flush()
                await writer.drain()
                return
            except ssl.SSLWantReadError:
                channel.flush()
                await writer.drain()
                if not await channel.pull():
                    raise ConnectionError("peer closed during the TLS handshake") from None

    await asyncio.wait_for(handshake(), HANDSHAKE_TIMEOUT)
    return TlsReader(channel), TlsWriter(channel)
