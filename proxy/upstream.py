"""The Docker daemon we forward to: one narrow method, ``open()``."""

from __future__ import annotations

import asyncio
import ssl

from proxy.addresses import SocketAddress

STREAM_LIMIT = 1 << 20


class UpstreamUnavailable(ConnectionError):
    pass


class Upstream:
    def __init__(self, address: SocketAddress, tls: ssl.SSLContext | None = None) -> None:
        if tls is not None and address.scheme != "tcp":
            raise ValueError("TLS to the upstream needs a tcp:// upstream")
        self.address = address
        self._tls = tls

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if self.address.scheme == "unix":
                return await asyncio.open_unix_connection(self.address.path, limit=STREAM_LIMIT)
            return await asyncio.open_connection(
                self.address.host, self.address.port, ssl=self._tls, limit=STREAM_LIMIT
            )
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnavailable(
                f"plugstrip cannot reach the Docker daemon at {self.address}: {exc}"
            ) from exc
