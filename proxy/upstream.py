"""The Docker daemon we forward to: one narrow method, ``open()``."""

from __future__ import annotations

import asyncio
import ssl

from plugstrip.proxy import tls as tls_layer
from plugstrip.proxy.addresses import SocketAddress
from plugstrip.proxy.http1 import ByteReader, ByteWriter

STREAM_LIMIT = 1 << 20


class UpstreamUnavailable(ConnectionError):
    pass


class Upstream:
    def __init__(self, address: SocketAddress, tls: ssl.SSLContext | None = None) -> None:
        if tls is not None and address.scheme != "tcp":
            raise ValueError("TLS to the upstream needs a tcp:// upstream")
        self.address = address
        self.tls = tls

    async def open(self) -> tuple[ByteReader, ByteWriter]:
        addr = self.address
        try:
            if addr.scheme == "unix":
                return await asyncio.open_unix_connection(addr.path, limit=STREAM_LIMIT)
            reader, writer = await asyncio.open_connection(addr.host, addr.port, limit=STREAM_LIMIT)
            if self.tls is None:
                return reader, writer
            try:
                return await tls_layer.wrap(
                    self.tls, reader, writer, server_side=False, server_hostname=addr.host
                )
            except BaseException:
                writer.close()
                raise
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"plugstrip cannot reach the Docker daemon at {self.address}: {exc}"
            ) from exc
