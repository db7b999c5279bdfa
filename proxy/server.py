"""Listeners, configuration reloads and a clean drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import resource
import socket
import ssl
import struct
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugstrip.proxy import tls as tls_layer
from plugstrip.proxy.adapter_manager import AdapterManager
from plugstrip.proxy.adapter_model import BuiltIn
from plugstrip.proxy.addresses import SocketAddress
from plugstrip.proxy.config import Config, ConfigError, load_file
from plugstrip.proxy.connection import ClientConnection, Shared
from plugstrip.proxy.contract import Peer
from plugstrip.proxy.docker_api import DockerApi
from plugstrip.proxy.http1 import ByteReader, ByteWriter
from plugstrip.proxy.metrics import Metrics
from plugstrip.proxy.trace import Trace
from plugstrip.proxy.upstream import STREAM_LIMIT, Upstream

log = logging.getLogger("plugstrip.server")


def _max_backlog() -> int:
    """The system's maximum, as the daemon listens (Go reads the same file): asyncio's
    default of 100 resets a burst of clients the daemon would have taken."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text())
    except (OSError, ValueError):
        return socket.SOMAXCONN


_BACKLOG = _max_backlog()


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one, as Go does for dockerd at start:
    each client connection holds two descriptors here (client and upstream)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass(frozen=True)
class Listener:
    address: SocketAddress
    tls: ssl.SSLContext | None = None


class ProxyServer:
    def __init__(
        self,
        upstream: Upstream,
        config_path: str | None,
        metrics: Metrics | None = None,
        builtins: Sequence[BuiltIn] = (),
        flags: Config | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.config_path = config_path
        self.flags = flags or Config()  # adapters set up by command-line flags, kept across reloads
        config = self.flags.before(load_file(config_path) if config_path else Config())
        self.daemon = DockerApi(upstream.address, upstream.tls)  # for adapters' lookups
        self.adapters = AdapterManager(builtins, self.metrics, self.daemon)
        self.shared = Shared(upstream, self.adapters.build(config), self.metrics, Trace())
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[str] = []  # asyncio (before 3.13) leaves socket files behind
        self._connections: dict[ClientConnection, asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._config_mtime = _mtime(config_path)
        self._closing = contextlib.AsyncExitStack()
        self._closing.push_async_callback(self.daemon.close)

    # ---- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start the built-ins, then the configured adapters. ``aclose`` undoes it in
        reverse order, also after a start that failed half way."""
        self._closing.push_async_callback(self.adapters.aclose)
        await self.adapters.start_builtins()
        await self.adapters.start(self.shared.loaded)

    async def aclose(self) -> None:
        """Stop listening (if ``drain`` did not), then close what ``start`` started."""
        self._stop_listening()
        await self._closing.aclose()

    def _stop_listening(self) -> None:
        for server in self._servers:
            server.close()
        for path in self._unix_paths:  # no new client finds the socket
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._unix_paths.clear()

    # ---- listening ---------------------------------------------------------------------

    async def listen(self, listener: Listener) -> SocketAddress:
        """Listen on ``listener``; returns the address bound (port 0 becomes the real one)."""
        addr = listener.address
        accept = functools.partial(self._accept, tls=listener.tls)
        if addr.scheme == "unix":
            _prepare_unix_path(addr.path)
            server = await asyncio.start_unix_server(
                accept, addr.path, limit=STREAM_LIMIT, backlog=_BACKLOG
            )
            _copy_socket_permissions(addr.path, self.shared.upstream.address)
            self._unix_paths.append(addr.path)
        else:
            server = await asyncio.start_server(
                accept,
                addr.host,
                addr.port,
                limit=STREAM_LIMIT,
                reuse_address=True,
                backlog=_BACKLOG,
            )
        self._servers.append(server)
        if addr.scheme == "tcp" and addr.port == 0:
            addr = dataclasses.replace(addr, port=server.sockets[0].getsockname()[1])
        log.info("listening", extra={"listen": str(addr), "tls": listener.tls is not None})
        return addr

    async def _accept(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls: ssl.SSLContext | None,
    ) -> None:
        client: tuple[ByteReader, ByteWriter] = (reader, writer)
        if tls is not None:
            try:
                client = await tls_layer.wrap(tls, reader, writer, server_side=True)
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                log.info(
                    "TLS handshake failed",
                    extra={"peer": str(writer.get_extra_info("peername")), "error": str(exc)},
                )
                writer.close()
                return
        conn = ClientConnection(self.shared, *client, _peer_of(client[1]))
        task = asyncio.current_task()
        assert task is not None
        self._connections[conn] = task
        self.metrics.connections.inc()
        try:
            await conn.serve()
        finally:
            del self._connections[conn]
            self.metrics.connections.dec()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    # ---- configuration -----------------------------------------------------------------

    async def reload(self) -> bool:
        """Load the file again and start its adapters; a bad file, or an adapter that
        fails to start, is logged and the running configuration kept."""
        if not self.config_path:
            return False
        self._config_mtime = _mtime(self.config_path)
        try:
            loaded = self.adapters.build(self.flags.before(load_file(self.config_path)))
            await self.adapters.start(loaded)
        except ConfigError as exc:
            log.error("configuration not reloaded, keeping the running one: %s", exc)
            return False
        old, self.shared.loaded = self.shared.loaded, loaded
        self.adapters.retire(old)
        log.info("configuration reloaded", extra={"config": self.config_path})
        return True

    def reload_soon(self) -> None:
        """For a signal handler: reload in a task of its own."""
        self._spawn(self.reload())

    async def watch_config(self, interval: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.config_path and _mtime(self.config_path) != self._config_mtime:
                await self.reload()

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- shutdown ----------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Stop accepting, let calls in flight finish for up to ``grace`` seconds, then close
        the rest (streams and hijacks have no natural end)."""
        self._stop_listening()
        for conn in self._connections:
            conn.draining = True  # close after the call in flight
            if not conn.busy:
                conn.client.close()
        if self._connections:
            await asyncio.wait(list(self._connections.values()), timeout=grace)
        for conn in list(self._connections):
            conn.client.close()
            conn.close_upstream()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        for task in self._tasks:
            task.cancel()


def _mtime(path: str | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None


def _prepare_unix_path(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # a stale socket left by a process that died
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another process")


def _copy_socket_permissions(path: str, upstream: SocketAddress) -> None:
    """Give our socket the daemon socket's owner, group and mode (root:docker 0660 usually),
    so exactly the users who may use the daemon may use the proxy."""
    try:
        st = os.stat(upstream.path) if upstream.scheme == "unix" else None
    except OSError:
        st = None
    if st is None:
        os.chmod(path, 0o660)
        return
    os.chown(path, st.st_uid, st.st_gid)
    os.chmod(path, st.st_mode & 0o777)


def _peer_of(writer: ByteWriter) -> Peer:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", creds)
            return Peer("unix", uid=uid, pid=pid, gid=gid)
        except OSError:
            return Peer("unix")
    peername = writer.get_extra_info("peername")
    address = f"{peername[0]}:{peername[1]}" if peername else ""
    cert = writer.get_extra_info("peercert")
    subject = None
    sans: tuple[str, ...] = ()
    if cert:  # only a verified certificate is given (--tlsverify)
        subject = next(
            (v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), None
        )
        sans = tuple(f"{kind}:{value}" for kind, value in cert.get("subjectAltName", ()))
    return Peer("tcp", address=address, tls_subject=subject, tls_sans=sans)
