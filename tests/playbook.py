"""The proxy's byte path, scripted: a client and a daemon that are byte strings, as
mitmproxy's ``Playbook`` tests its layers. No process and no daemon: a real
``ClientConnection`` between two socket pairs, so what it sends either way, and when it
closes or reuses a connection, are what the test sees.

::

    async with Playbook() as pb:
        await pb.client_sends(b"GET /_ping HTTP/1.1\\r\\nHost: d\\r\\n\\r\\n")
        await pb.daemon_expects(b"GET /_ping HTTP/1.1\\r\\nHost: d\\r\\n\\r\\n")
        await pb.daemon_sends(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nOK")
        await pb.client_expects(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nOK")
        await pb.client_kept()  # the decision: the connection stays open
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from plugstrip.proxy.adapter_manager import AdapterManager
from plugstrip.proxy.adapter_model import BuiltIn, HookPolicy, LoadedAdapter
from plugstrip.proxy.addresses import SocketAddress
from plugstrip.proxy.config import Config
from plugstrip.proxy.connection import ClientConnection, Shared
from plugstrip.proxy.contract import Peer
from plugstrip.proxy.http1 import ByteReader, ByteWriter
from plugstrip.proxy.metrics import Metrics
from plugstrip.proxy.relay_plan import RelayPlan
from plugstrip.proxy.routes import Route
from plugstrip.proxy.trace import Trace
from plugstrip.proxy.upstream import Upstream

WAIT = 2.0  # seconds any one step may take: a step that hangs fails, it does not block


async def _pair() -> tuple[tuple[ByteReader, ByteWriter], tuple[Any, Any]]:
    """Two connected stream ends: (plugstrip's, the scripted peer's)."""
    ours, theirs = socket.socketpair()
    return await asyncio.open_connection(sock=ours), await asyncio.open_connection(sock=theirs)


class _ScriptedUpstream(Upstream):
    """The daemon: each connection plugstrip opens is a socket pair whose far end the
    playbook drives."""

    def __init__(self) -> None:
        super().__init__(SocketAddress.parse("unix:///playbook/docker.sock"))
        self.connections: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()
        self.opened = 0

    async def open(self) -> tuple[ByteReader, ByteWriter]:
        ours, theirs = await _pair()
        self.opened += 1
        self.connections.put_nowait(theirs)
        return ours


def builtin(adapter: object, name: str = "scripted") -> BuiltIn:
    """``adapter`` on every call, as a built-in is (so its hooks hold bodies)."""
    loaded = LoadedAdapter(name, adapter, HookPolicy(timeout=WAIT))
    return BuiltIn((Route.parse("* /**"),), loaded)


class Playbook:
    def __init__(self, adapters: Sequence[BuiltIn] = ()) -> None:
        self.upstream = _ScriptedUpstream()
        self._adapters = AdapterManager(adapters)
        self._daemon: tuple[Any, Any] | None = None
        self._client: tuple[Any, Any] | None = None
        self._served: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Playbook:
        ours, self._client = await _pair()
        shared = Shared(self.upstream, self._adapters.build(Config()), Metrics(), Trace())
        self.connection = ClientConnection(shared, *ours, Peer("unix", uid=0, pid=1))
        self._served = asyncio.create_task(self.connection.serve())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._client is not None and self._served is not None
        self._client[1].close()
        try:
            await asyncio.wait_for(self._served, WAIT)  # the client gone: serve returns
        finally:
            await self._adapters.aclose()

    @property
    def plan(self) -> RelayPlan | None:
        """How the connection decided to relay the last answer from the daemon."""
        return self.connection.exchange.plan

    # ---- the client ------------------------------------------------------------------

    async def client_sends(self, data: bytes) -> None:
        assert self._client is not None
        self._client[1].write(data)
        await self._client[1].drain()

    async def client_expects(self, data: bytes) -> None:
        """The client receives exactly ``data`` next."""
        assert self._client is not None
        got = await _read(self._client[0], len(data))
        assert got == data, f"client got {got!r}, expected {data!r}"

    async def client_closed(self) -> None:
        """Plugstrip closes the client connection now, with nothing more sent."""
        assert self._client is not None
        rest = await asyncio.wait_for(self._client[0].read(), WAIT)
        assert rest == b"", f"client got {rest!r} before the close"

    async def client_hangs_up(self) -> None:
        assert self._client is not None
        self._client[1].close()

    async def client_kept(self) -> None:
        """The client connection stays open, with nothing more sent."""
        assert self._client is not None
        try:
            early = await asyncio.wait_for(self._client[0].read(1), 0.1)
        except TimeoutError:
            return
        raise AssertionError(f"client connection not kept: got {early!r}")

    async def to_daemon(self, data: bytes) -> None:
        """What the client sends reaches the daemon as sent."""
        await self.client_sends(data)
        await self.daemon_expects(data)

    async def to_client(self, data: bytes) -> None:
        """What the daemon sends reaches the client as sent."""
        await self.daemon_sends(data)
        await self.client_expects(data)

    async def passes(self, request: bytes, answer: bytes) -> None:
        """``request`` reaches the daemon as sent, and its ``answer`` the client."""
        await self.to_daemon(request)
        await self.to_client(answer)

    # ---- the daemon ------------------------------------------------------------------

    async def daemon_expects(self, data: bytes, new: bool = False) -> None:
        """The daemon receives exactly ``data`` next: on the connection it has, or (no
        connection yet, or ``new``) on the next one plugstrip opens."""
        if self._daemon is None or new:
            self._daemon = await asyncio.wait_for(self.upstream.connections.get(), WAIT)
        got = await _read(self._daemon[0], len(data))
        assert got == data, f"daemon got {got!r}, expected {data!r}"

    async def daemon_sends(self, data: bytes) -> None:
        assert self._daemon is not None
        self._daemon[1].write(data)
        await self._daemon[1].drain()

    async def daemon_closes(self) -> None:
        assert self._daemon is not None
        self._daemon[1].close()

    async def upstream_closed(self) -> None:
        """Plugstrip closes its connection to the daemon (nothing more sent on it)."""
        assert self._daemon is not None
        rest = await asyncio.wait_for(self._daemon[0].read(), WAIT)
        assert rest == b"", f"daemon got {rest!r} before the close"


async def _read(reader: asyncio.StreamReader, n: int) -> bytes:
    """``n`` bytes, or fewer if the connection closes first (shown in the failure)."""
    out = b""
    try:
        async with asyncio.timeout(WAIT):
            while len(out) < n and (more := await reader.read(n - len(out))):
                out += more
    except TimeoutError:
        pass
    return out
