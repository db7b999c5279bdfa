"""``plugstrip serve`` and ``plugstrip trace``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.client
import json
import logging
import os
import signal
import socket
import sys
import time
import urllib.request
from contextlib import suppress
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web
from netaddr import IPAddress

from plugstrip.adapters.network import NetworkAdapter, builtin, holder_pool
from plugstrip.adapters.socket_proxy_env import policy_options
from plugstrip.cli import ops
from plugstrip.cli.ops import RUNTIME_FILE
from plugstrip.netdrivers import ipam
from plugstrip.netdrivers.contract import Driver
from plugstrip.netdrivers.ipam import DEFAULT_RANGE
from plugstrip.netdrivers.mesh import Mesh
from plugstrip.netdrivers.netlink import Netlink, Underlay
from plugstrip.netdrivers.ovs import OvsDriver
from plugstrip.netdrivers.ovsdb import Ovsdb
from plugstrip.netdrivers.own_loop import LoopThread, OnOwnLoop
from plugstrip.netdrivers.service import NetworkService
from plugstrip.netdrivers.store import host_id, open_store
from plugstrip.netdrivers.weave import WeaveDriver
from plugstrip.proxy import logs
from plugstrip.proxy.addresses import SocketAddress
from plugstrip.proxy.admin import admin_app
from plugstrip.proxy.config import AdapterSpec, Config, ConfigError, EndpointSpec
from plugstrip.proxy.docker_api import DockerApi
from plugstrip.proxy.routes import Route
from plugstrip.proxy.server import Listener, ProxyServer, raise_open_files_limit
from plugstrip.proxy.tls import TlsFiles, client_context, server_context
from plugstrip.proxy.upstream import Upstream

log = logging.getLogger("plugstrip")

DEFAULT_LISTEN = "unix:///run/plugstrip/docker.sock"
DEFAULT_UPSTREAM = "unix:///var/run/docker.sock"
DEFAULT_STATE_DIR = "/var/lib/plugstrip"
DEFAULT_OVSDB = "unix:/var/run/openvswitch/db.sock"


class UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except (UsageError, ConfigError, ValueError, OSError) as exc:
        print(f"plugstrip: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plugstrip", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    store = os.environ.get("PLUGSTRIP_STORE") or None  # serve's and the operator commands'

    serve = sub.add_parser("serve", help="run the proxy in front of a Docker daemon")
    serve.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help=f"unix:///path or tcp://host:port, repeatable (default {DEFAULT_LISTEN})",
    )
    serve.add_argument(
        "--upstream",
        metavar="URL",
        default=os.environ.get("PLUGSTRIP_UPSTREAM", DEFAULT_UPSTREAM),
        help="the daemon (default $PLUGSTRIP_UPSTREAM, else %(default)s)",
    )
    serve.add_argument("--config", metavar="FILE", help="adapters.yml (Powerstrip's format)")
    serve.add_argument("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR)
    serve.add_argument("--admin", metavar="URL", help="metrics, status and trace listener")
    serve.add_argument("--tls", action="store_true", help="TLS on TCP listeners")
    serve.add_argument(
        "--tlsverify",
        action="store_true",
        help="TLS, and require client certificates signed by --tlscacert",
    )
    serve.add_argument("--tlscacert", metavar="FILE")
    serve.add_argument("--tlscert", metavar="FILE")
    serve.add_argument("--tlskey", metavar="FILE")
    serve.add_argument(
        "--upstream-tlsverify",
        action="store_true",
        help="TLS to a tcp:// upstream, checking its certificate",
    )
    serve.add_argument("--upstream-tls", action="store_true", help="TLS to a tcp:// upstream")
    serve.add_argument("--upstream-tlscacert", metavar="FILE")
    serve.add_argument("--upstream-tlscert", metavar="FILE")
    serve.add_argument("--upstream-tlskey", metavar="FILE")
    serve.add_argument(
        "--allow-insecure-tcp",
        action="store_true",
        help="allow a TCP listener without verified TLS on a non-loopback address",
    )
    serve.add_argument(
        "--policy-from-env",
        action="store_true",
        help="a policy on every call from docker-socket-proxy's environment variables "
        "(CONTAINERS=1, POST=0, ...), with request body checks on top",
    )
    serve.add_argument(
        "--no-body-checks",
        action="store_true",
        help="with --policy-from-env: check API sections only, as docker-socket-proxy does",
    )
    serve.add_argument(
        "--no-networks",
        action="store_true",
        help="turn off plugstrip networks (the built-in network adapter)",
    )
    serve.add_argument(
        "--store",
        metavar="URL",
        default=store,
        help="etcd://HOST:PORT[,HOST:PORT...] shared by hosts (default $PLUGSTRIP_STORE, "
        "else the embedded SQLite store)",
    )
    serve.add_argument(
        "--advertise-addr",
        metavar="IP",
        default=os.environ.get("PLUGSTRIP_ADVERTISE_ADDR") or None,
        help="this host's underlay address, which other hosts send VXLAN to (with --store "
        "etcd://: networks span the hosts; default $PLUGSTRIP_ADVERTISE_ADDR)",
    )
    serve.add_argument(
        "--mtu",
        type=int,
        metavar="N",
        help="the underlay's MTU; plugstrip network devices get N - 50 (default: the MTU "
        "of the --advertise-addr device, else of the default route's device)",
    )
    serve.add_argument(
        "--spare-holders",
        type=int,
        default=holder_pool.DEFAULT_SIZE,
        metavar="N",
        help="network holders kept started ahead, for fast creates (default %(default)s)",
    )
    serve.add_argument(
        "--ipalloc-range",
        metavar="CIDR",
        default=str(DEFAULT_RANGE),
        help="where subnets for networks without --subnet come from (default %(default)s)",
    )
    serve.add_argument(
        "--ovsdb",
        metavar="URL",
        default=DEFAULT_OVSDB,
        help="Open vSwitch database for plugstrip/ovs (default %(default)s)",
    )
    serve.add_argument(
        "--ovs-datapath",
        choices=("system", "netdev"),
        help="OVS datapath type (default: system if the kernel module is loaded, else netdev)",
    )
    serve.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="SECONDS")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--log-format", choices=("json", "text"), default="json")
    serve.set_defaults(func=_serve)

    ops.add_commands(sub, DEFAULT_STATE_DIR, DEFAULT_OVSDB, store)

    trace = sub.add_parser("trace", help="show the last intercepted calls and adapter changes")
    trace.add_argument("--admin", metavar="URL", help="admin URL (default: from --state-dir)")
    trace.add_argument("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR)
    trace.add_argument("--limit", type=int, default=20)
    trace.add_argument("--json", action="store_true", help="raw JSON")
    trace.set_defaults(func=_trace)
    return parser


# ---- serve ---------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
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
    if not args.policy_from_env:
        return Config()
    options = policy_options(os.environ, body_checks=not args.no_body_checks)
    spec = AdapterSpec("socket-proxy-env", "entrypoint", "policy", options)
    route = Route.parse("* /**")
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
    network = None
    if underlay is not None:
        log.info("underlay", extra={"mtu": underlay.mtu, "from": underlay.source})
        network = _network_adapter(args, upstream, underlay.mtu)
    builtins = [] if network is None else [builtin(network)]
    raise_open_files_limit()
    server = ProxyServer(upstream, args.config, builtins=builtins, flags=_flag_adapters(args))
    if network is not None:
        await network.start()
    bound = [await server.listen(listener) for listener in listeners]
    runner = None
    if admin is not None:
        runner = web.AppRunner(admin_app(server), access_log=None)
        await runner.setup()
        site: web.BaseSite = (
            web.UnixSite(runner, admin.path)
            if admin.scheme == "unix"
            else web.TCPSite(runner, admin.host, admin.port)
        )
        await site.start()
        if admin.scheme == "tcp" and admin.port == 0:  # any free port: say which
            admin = dataclasses.replace(admin, port=runner.addresses[0][1])
        log.info("admin listening", extra={"admin": str(admin)})
    _write_runtime(args.state_dir, bound, admin, underlay)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    watcher = asyncio.create_task(server.watch_config())
    for listener in listeners:
        if listener.address.scheme == "unix":
            print(f"export DOCKER_HOST=unix://{listener.address.path}", flush=True)
    log.info("plugstrip ready", extra={"upstream": str(upstream.address)})
    await stop.wait()
    log.info("draining", extra={"grace_seconds": args.shutdown_timeout})
    watcher.cancel()
    await server.drain(args.shutdown_timeout)
    if network is not None:
        await network.close()
        await network.service.store.close()
    if runner is not None:
        await runner.cleanup()
    with suppress(OSError):
        (Path(args.state_dir) / RUNTIME_FILE).unlink()
    log.info("stopped")
    return 0


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
    try:
        pool = ipam.parse_subnet(args.ipalloc_range)
    except ipam.IpamError as exc:
        raise UsageError(f"--ipalloc-range: {exc}") from None
    advertise = None
    if args.advertise_addr is not None:
        try:
            advertise = IPv4Address(args.advertise_addr)
        except ValueError:
            msg = f"--advertise-addr: {args.advertise_addr!r} is not an IPv4 address"
            raise UsageError(msg) from None
    elif args.store is not None:
        log.warning("no --advertise-addr: other hosts' containers are not reachable from here")
    datapath = LoopThread()
    drivers: dict[str, Driver] = {
        d.name: OnOwnLoop(d, datapath)
        for d in (
            WeaveDriver(local=advertise, underlay_mtu=underlay_mtu),
            OvsDriver(
                Ovsdb(args.ovsdb), datapath_type=args.ovs_datapath, underlay_mtu=underlay_mtu
            ),
        )
    }
    store = open_store(args.store, args.state_dir)
    service = NetworkService(store, drivers, pool, host=host_id(args.state_dir))
    mesh = None if advertise is None else Mesh(service, IPAddress(str(advertise)))
    api = DockerApi(upstream.address, upstream.tls)
    return NetworkAdapter(service, api, spare_holders=max(0, args.spare_holders), mesh=mesh)


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


# ---- trace ---------------------------------------------------------------------------------


def _trace(args: argparse.Namespace) -> int:
    admin = args.admin
    if admin is None:
        try:
            admin = json.loads((Path(args.state_dir) / RUNTIME_FILE).read_text())["admin"]
        except (OSError, ValueError, KeyError):
            admin = None
        if not admin:
            raise UsageError("no admin listener known: pass --admin URL (serve with --admin)")
    records = _get_json(SocketAddress.parse(admin, default_port=9323), f"/trace?limit={args.limit}")
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    for rec in records:
        stamp = time.strftime("%H:%M:%S", time.localtime(rec["time"]))
        print(
            f"{stamp} {rec['method']} {rec['target']} -> {rec['status']}  "
            f"[{rec['endpoint']}] {rec['peer']}"
        )
        for step in rec["steps"]:
            print(
                f"    {step['hook']:<9} {step['adapter']:<16} {step['outcome']} "
                f"({step['seconds'] * 1000:.1f} ms)"
            )
            for change in step["changes"]:
                print("        " + change.replace("\n", "\n        "))
    return 0


def _get_json(addr: SocketAddress, path: str) -> Any:
    if addr.scheme == "tcp":
        with urllib.request.urlopen(f"http://{addr.host}:{addr.port}{path}", timeout=10) as r:
            return json.load(r)
    conn = UnixHTTPConnection(addr.path)
    conn.request("GET", path)
    return json.load(conn.getresponse())


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the admin listener, or a Docker socket)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self._path)


if __name__ == "__main__":
    sys.exit(main())
