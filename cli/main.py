"""The command line: ``plugstrip serve``, the operator commands and ``plugstrip trace``."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from plugstrip.adapters.network.holder_pool import DEFAULT_SIZE as DEFAULT_SPARES
from plugstrip.cli import ops, policy, sg
from plugstrip.cli.ops import RUNTIME_FILE
from plugstrip.cli.serve import DEFAULT_LISTEN, UsageError, serve_command
from plugstrip.netdrivers.datapath.drivers import DEFAULT_OVSDB
from plugstrip.netdrivers.domain.errors import NetworkError
from plugstrip.netdrivers.domain.ipam import DEFAULT_RANGE, DEFAULT_RANGE6
from plugstrip.proxy.addresses import SocketAddress
from plugstrip.proxy.config import ConfigError

DEFAULT_UPSTREAM = "unix:///var/run/docker.sock"
DEFAULT_STATE_DIR = "/var/lib/plugstrip"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except (UsageError, ConfigError, ValueError, OSError, NetworkError) as exc:
        print(f"plugstrip: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plugstrip", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    store = os.environ.get("PLUGSTRIP_STORE") or None  # serve's and the operator commands'

    serve = sub.add_parser("serve", help="run the proxy in front of a Docker daemon")
    serve_arguments(serve, store)
    serve.set_defaults(func=serve_command)

    ops.add_commands(sub, DEFAULT_STATE_DIR, DEFAULT_OVSDB, store)
    sg.add_commands(sub, DEFAULT_STATE_DIR, store)
    policy.add_commands(sub, lambda p: serve_arguments(p, store), DEFAULT_UPSTREAM)

    trace = sub.add_parser("trace", help="show the last intercepted calls and adapter changes")
    trace.add_argument("--admin", metavar="URL", help="admin URL (default: from --state-dir)")
    trace.add_argument("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR)
    trace.add_argument("--limit", type=int, default=20)
    trace.add_argument("--json", action="store_true", help="raw JSON")
    trace.set_defaults(func=_trace)
    return parser


def serve_arguments(parser: argparse.ArgumentParser, store: str | None) -> None:
    """The options of ``serve`` (also those of ``policy learn``, which serves)."""
    parser.set_defaults(learn_record=None, learn_for=None)
    parser.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help=f"unix:///path or tcp://host:port, repeatable (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--upstream",
        metavar="URL",
        default=os.environ.get("PLUGSTRIP_UPSTREAM", DEFAULT_UPSTREAM),
        help="the daemon (default $PLUGSTRIP_UPSTREAM, else %(default)s)",
    )
    parser.add_argument("--config", metavar="FILE", help="adapters.yml (Powerstrip's format)")
    parser.add_argument("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR)
    parser.add_argument("--admin", metavar="URL", help="metrics, status and trace listener")
    parser.add_argument("--tls", action="store_true", help="TLS on TCP listeners")
    parser.add_argument(
        "--tlsverify",
        action="store_true",
        help="TLS, and require client certificates signed by --tlscacert",
    )
    parser.add_argument("--tlscacert", metavar="FILE")
    parser.add_argument("--tlscert", metavar="FILE")
    parser.add_argument("--tlskey", metavar="FILE")
    parser.add_argument(
        "--upstream-tlsverify",
        action="store_true",
        help="TLS to a tcp:// upstream, checking its certificate",
    )
    parser.add_argument("--upstream-tls", action="store_true", help="TLS to a tcp:// upstream")
    parser.add_argument("--upstream-tlscacert", metavar="FILE")
    parser.add_argument("--upstream-tlscert", metavar="FILE")
    parser.add_argument("--upstream-tlskey", metavar="FILE")
    parser.add_argument(
        "--allow-insecure-tcp",
        action="store_true",
        help="allow a TCP listener without verified TLS on a non-loopback address",
    )
    parser.add_argument(
        "--policy-from-env",
        action="store_true",
        help="a policy on every call from docker-socket-proxy's environment variables "
        "(CONTAINERS=1, POST=0, ...), with request body checks on top",
    )
    parser.add_argument(
        "--no-body-checks",
        action="store_true",
        help="with --policy-from-env: check API sections only, as docker-socket-proxy does",
    )
    parser.add_argument(
        "--no-networks",
        action="store_true",
        help="turn off plugstrip networks (the built-in network adapter)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        default=store,
        help="etcd://HOST:PORT[,HOST:PORT...] shared by hosts (default $PLUGSTRIP_STORE, "
        "else the embedded SQLite store)",
    )
    parser.add_argument(
        "--advertise-addr",
        metavar="IP",
        default=os.environ.get("PLUGSTRIP_ADVERTISE_ADDR") or None,
        help="this host's underlay address, which other hosts send VXLAN to (with --store "
        "etcd://: networks span the hosts; default $PLUGSTRIP_ADVERTISE_ADDR)",
    )
    parser.add_argument(
        "--mtu",
        type=int,
        metavar="N",
        help="the underlay's MTU; plugstrip network devices get N - 50 (default: the MTU "
        "of the --advertise-addr device, else of the default route's device)",
    )
    parser.add_argument(
        "--spare-holders",
        type=int,
        default=DEFAULT_SPARES,
        metavar="N",
        help="network holders kept started ahead, for fast creates (default %(default)s)",
    )
    parser.add_argument(
        "--flow-log",
        metavar="FILE",
        help="the security groups' flow log: a sample of what they drop, as JSON lines"
        " (default: flow-log.jsonl in --state-dir; 'off': none)",
    )
    parser.add_argument(
        "--ipalloc-range",
        metavar="CIDR",
        default=str(DEFAULT_RANGE),
        help="where subnets for networks without --subnet come from (default %(default)s)",
    )
    parser.add_argument(
        "--ipv6-range",
        metavar="CIDR",
        default=str(DEFAULT_RANGE6),
        help="where a /64 for each --ipv6 network without an IPv6 --subnet comes from "
        "(default %(default)s, a unique local /48)",
    )
    parser.add_argument(
        "--ovsdb",
        metavar="URL",
        default=DEFAULT_OVSDB,
        help="Open vSwitch database for plugstrip/ovs (default %(default)s)",
    )
    parser.add_argument(
        "--ovs-datapath",
        choices=("system", "netdev"),
        help="OVS datapath type (default: system if the kernel module is loaded, else netdev)",
    )
    parser.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")


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
