"""``plugstrip serve``: the composition root. It makes the drivers, the control plane, the
built-in and configured adapters and the proxy, and runs their life cycle on one exit
stack, so whatever was started is stopped in reverse order, also when start-up fails
half way."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
from contextlib import AsyncExitStack, suppress
from pathlib import Path

import uvloop
from aiohttp import web
from netaddr import AddrFormatError, IPAddress

from plugstrip.adapters.network import NetworkAdapter
from plugstrip.adapters.network.sg_metrics import SecurityGroupMetrics
from plugstrip.adapters.policy.socket_proxy_env import policy_options
from plugstrip.cli.ops import RUNTIME_FILE
from plugstrip.netdrivers.control.flow_log import FlowLog
from plugstrip.netdrivers.control.guard import Guard
from plugstrip.netdrivers.control.mesh import Mesh
from plugstrip.netdrivers.control.service import NetworkService
from plugstrip.netdrivers.datapath.drivers import DriverSettings, make_drivers
from plugstrip.netdrivers.datapath.netlink import Netlink, Underlay
from plugstrip.netdrivers.datapath.own_loop import LoopThread, OnOwnLoop
from plugstrip.netdrivers.domain import ipam
from plugstrip.netdrivers.domain.errors import NetworkError
from plugstrip.netdrivers.stores.factory import open_store
from plugstrip.netdrivers.stores.store import host_id
from plugstrip.proxy import logs
from plugstrip.proxy.addresses import SocketAddress
from plugstrip.proxy.admin import admin_app
from plugstrip.proxy.config import AdapterSpec, Config, EndpointSpec
from plugstrip.proxy.docker_api import DockerApi
from plugstrip.proxy.routes import Route
from plugstrip.proxy.server import Listener, ProxyServer, raise_open_files_limit
from plugstrip.proxy.tls import TlsFiles, client_context, server_context
from plugstrip.proxy.upstream import Upstream

log = logging.getLogger("plugstrip")

DEFAULT_LISTEN = "unix:///run/plugstrip/docker.sock"
_LEARNER = "plugstrip.adapters.policy.learn:PolicyLearner"


class UsageError(Exception):
    pass


def serve_command(args: argparse.Namespace) -> int:
    logs.setup(args.log_level, args.log_format)
    listeners = _listeners(args)
    upstream = _upstream(args)
    admin = SocketAddress.parse(args.admin, default_port=9323) if args.admin else None
    # On the standard loop: uvloop, which serves, cannot open netlink sockets.
    underlay = None if args.no_networks else asyncio.run(_underlay(args))
    return uvloop.run(_run(args, listeners, upstream, admin, underlay))


def _listeners(args: argparse.Namespace) -> list[Listener]:
    tls = None
    if args.tls or args.tlsverify:
        tls = server_context(TlsFiles(args.tlsverify, args.tlscacert, args.tlscert, args.tlskey))
    out = []
    for url in args.listen or [DEFAULT_LISTEN]:
        addr = SocketAddress.parse(url)
        if addr.scheme == "tcp" and not addr.is_loopback and not args.tlsverify:
            # Whoever reaches the Docker API is root on the host.
            if not args.allow_insecure_tcp:
                raise UsageError(
                    f"refusing to listen on {addr} without --tlsverify: anyone who can "
                    "connect would control the host (force with --allow-insecure-tcp)"
                )
            log.warning("listening on %s without verified TLS: anyone reaching it is root", addr)
        out.append(Listener(addr, tls if addr.scheme == "tcp" else None))
    return out


def _flag_adapters(args: argparse.Namespace) -> Config:
    route = Route.parse("* /**")
    if args.learn_record:  # plugstrip policy learn: first on every call, observing only
        spec = AdapterSpec("policy-learn", "python", _LEARNER, {"record": args.learn_record})
        return Config((EndpointSpec(route, (spec.name,), ()),), {spec.name: spec})
    if not args.policy_from_env:
        return Config()
    options = policy_options(os.environ, body_checks=not args.no_body_checks)
    spec = AdapterSpec("socket-proxy-env", "entrypoint", "policy", options)
    return Config((EndpointSpec(route, (spec.name,), (spec.name,)),), {spec.name: spec})


def _upstream(args: argparse.Namespace) -> Upstream:
    addr = SocketAddress.parse(args.upstream)
    tls = None
    if args.upstream_tls or args.upstream_tlsverify:
        tls = client_context(
            TlsFiles(
                args.upstream_tlsverify,
                args.upstream_tlscacert,
                args.upstream_tlscert,
                args.upstream_tlskey,
            )
        )
    return Upstream(addr, tls)


async def _run(
    args: argparse.Namespace,
    listeners: list[Listener],
    upstream: Upstream,
    admin: SocketAddress | None,
    underlay: Underlay | None,
) -> int:
    async with AsyncExitStack() as stack:
        builtins = []
        if underlay is not None:
            log.info("underlay", extra={"mtu": underlay.mtu, "from": underlay.source})
            network = _network_adapter(args, upstream, underlay.mtu)
            builtins.append(network.builtin())
        raise_open_files_limit()
        server = ProxyServer(upstream, args.config, builtins=builtins, flags=_flag_adapters(args))
        stack.push_async_callback(server.aclose)
        if underlay is not None:
            counters = SecurityGroupMetrics(network.service, server.metrics.registry)
            server.metrics.refresh_with(counters.refresh)
        await server.start()
        bound = [await server.listen(listener) for listener in listeners]
        if admin is not None:
            admin = await _serve_admin(stack, server, admin)
        stack.callback(_remove_runtime, args.state_dir)
        _write_runtime(args.state_dir, bound, admin, underlay)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, server.reload_soon)
        if args.learn_for is not None:
            loop.call_later(args.learn_for, stop.set)
        watcher = asyncio.create_task(server.watch_config())
        stack.callback(watcher.cancel)
        for listener in listeners:
            if listener.address.scheme == "unix":
                print(f"export DOCKER_HOST=unix://{listener.address.path}", flush=True)
        log.info("plugstrip ready", extra={"upstream": str(upstream.address)})
        await stop.wait()
        log.info("draining", extra={"grace_seconds": args.shutdown_timeout})
        await server.drain(args.shutdown_timeout)
    log.info("stopped")
    return 0


async def _serve_admin(
    stack: AsyncExitStack, server: ProxyServer, admin: SocketAddress
) -> SocketAddress:
    runner = web.AppRunner(admin_app(server), access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site: web.BaseSite = (
        web.UnixSite(runner, admin.path)
        if admin.scheme == "unix"
        else web.TCPSite(runner, admin.host, admin.port)
    )
    await site.start()
    if admin.scheme == "tcp" and admin.port == 0:  # any free port: say which
        admin = dataclasses.replace(admin, port=runner.addresses[0][1])
    log.info("admin listening", extra={"admin": str(admin)})
    return admin


async def _underlay(args: argparse.Namespace) -> Underlay:
    """--mtu, else what the device VXLAN leaves from has."""
    if args.mtu is not None:
        if not 1280 <= args.mtu <= 65535:
            raise UsageError(f"--mtu: {args.mtu} is not between 1280 and 65535")
        return Underlay(args.mtu, "--mtu")
    async with Netlink() as nl:
        return await nl.underlay(args.advertise_addr)


def _network_adapter(
    args: argparse.Namespace, upstream: Upstream, underlay_mtu: int
) -> NetworkAdapter:
    """The network adapter over its control plane and drivers, which it owns: the
    server's adapter manager starts it and closes it, and it closes them."""
    try:
        pool = ipam.parse_subnet(args.ipalloc_range)
    except NetworkError as exc:
        raise UsageError(f"--ipalloc-range: {exc}") from None
    try:
        pool6 = ipam.parse_subnet(args.ipv6_range, 6)
        ipam.choose_subnet([], pool6, ipam.DEFAULT_PREFIX6)  # room for a /64 at all
    except NetworkError as exc:
        raise UsageError(f"--ipv6-range: {exc}") from None
    advertise = None
    if args.advertise_addr is not None:
        try:
            advertise = IPAddress(args.advertise_addr, 4)
        except (AddrFormatError, ValueError):
            msg = f"--advertise-addr: {args.advertise_addr!r} is not an IPv4 address"
            raise UsageError(msg) from None
    elif args.store is not None:
        log.warning("no --advertise-addr: other hosts' containers are not reachable from here")
    parts = AsyncExitStack()
    datapath = LoopThread()
    parts.callback(datapath.stop)
    settings = DriverSettings(args.ovsdb, args.ovs_datapath, underlay_mtu, advertise)
    drivers = {name: OnOwnLoop(d, datapath) for name, d in make_drivers(settings).items()}
    for driver in drivers.values():
        parts.push_async_callback(driver.close)
    changes = asyncio.Event()  # endpoints here came or went: the mesh syncs
    enforce = asyncio.Event()  # ... and the security groups are enforced again

    def changed() -> None:
        changes.set()
        enforce.set()

    service = NetworkService(
        open_store(args.store, args.state_dir),
        drivers,
        pool,
        pool6=pool6,
        host=host_id(args.state_dir),
        on_change=changed,
    )
    parts.push_async_callback(service.close)
    mesh = None if advertise is None else Mesh(service, advertise, changes)
    api = DockerApi(upstream.address, upstream.tls)
    flow_log = args.flow_log or str(Path(args.state_dir) / "flow-log.jsonl")
    return NetworkAdapter(
        service,
        api,
        spare_holders=max(0, args.spare_holders),
        mesh=mesh,
        guard=Guard(service, enforce),
        flow_log=None if flow_log == "off" else FlowLog(service, flow_log),
        parts=parts,
    )


def _write_runtime(
    state_dir: str,
    listening: list[SocketAddress],
    admin: SocketAddress | None,
    underlay: Underlay | None,
) -> None:
    path = Path(state_dir)
    path.mkdir(parents=True, exist_ok=True)
    doc = {
        "pid": os.getpid(),
        "listen": [str(address) for address in listening],
        "admin": str(admin) if admin else None,
        "underlay": None if underlay is None else {"mtu": underlay.mtu, "from": underlay.source},
    }
    # whole or not at all: tools and tests read it as soon as it is there
    partial = path / f".{RUNTIME_FILE}.{os.getpid()}"
    partial.write_text(json.dumps(doc))
    os.replace(partial, path / RUNTIME_FILE)


def _remove_runtime(state_dir: str) -> None:
    with suppress(OSError):
        (Path(state_dir) / RUNTIME_FILE).unlink()
