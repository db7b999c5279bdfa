"""A small async client for the daemon behind plugstrip, for adapters that own resources
(the network adapter makes holder containers, inspects, follows events)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp

from plugstrip.proxy.addresses import SocketAddress
from plugstrip.proxy.contract import Refuse

USER_AGENT = "plugstrip"


class DockerError(Refuse):
    """The daemon said no; status and message pass on to the client as they came."""


class DockerApi:
    def __init__(self, address: SocketAddress, tls: ssl.SSLContext | None = None) -> None:
        self.address = address
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector
            if self.address.scheme == "unix":
                connector = aiohttp.UnixConnector(path=self.address.path)
                base = "http://docker"
            else:
                connector = aiohttp.TCPConnector(ssl=self._tls or False)
                scheme = "https" if self._tls else "http"
                base = f"{scheme}://{self.address.host}:{self.address.port}"
            self._session = aiohttp.ClientSession(
                base_url=base,
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"User-Agent": USER_AGENT},  # plugstrip's own calls, in daemon logs
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
        ok_missing: bool = False,
    ) -> Any:
        """The decoded JSON answer (None when empty); a DockerError on an error status, or
        None for a 404 when ``ok_missing``."""
        async with self.session.request(method, path, json=body, params=params, data=data) as resp:
            raw = await resp.read()
            if resp.status == 404 and ok_missing:
                return None
            if resp.status >= 400:
                try:
                    message = json.loads(raw)["message"]
                except (ValueError, KeyError, TypeError):
                    message = raw.decode(errors="replace").strip()
                raise DockerError(resp.status, message)
            if not raw or "json" not in resp.content_type:
                return None
            return json.loads(raw)

    async def raw(self, path: str) -> bytes | None:
        """A GET's body as bytes (an archive, say); None for any error status."""
        async with self.session.get(path) as resp:
            return await resp.read() if resp.status < 400 else None

    async def inspect_container(self, name_or_id: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.call(
            "GET", f"/containers/{quote(name_or_id, safe='')}/json", ok_missing=True
        )
        return result

    async def events(
        self, filters: dict[str, list[str]], since: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The event stream from ``since`` (epoch seconds) on, one decoded event at a time,
        until it drops."""
        params = {"filters": json.dumps(filters), "since": f"{since:.9f}"}
        async with self.session.get("/events", params=params) as resp:
            if resp.status != 200:
                raise DockerError(resp.status, (await resp.read()).decode(errors="replace"))
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)
