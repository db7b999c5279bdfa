"""Operator commands for plugstrip networks: ``net ls|inspect|hosts``, ``doctor``, ``flows``.

They read the state store (SQLite allows readers while ``serve`` writes), the kernel and
Open vSwitch directly, so they answer even when plugstrip is not running: that is when an
operator needs them most.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from plugstrip.netdrivers.control.service import Attachment, NetworkService, to_network
from plugstrip.netdrivers.datapath import firewall, ovs, weave
from plugstrip.netdrivers.datapath.drivers import DriverSettings, make_drivers
from plugstrip.netdrivers.datapath.netlink import Netlink, Underlay
from plugstrip.netdrivers.datapath.ovsdb import Ovsdb, OvsdbUnavailable, detect_datapath, rundir
from plugstrip.netdrivers.datapath.weave import VXLAN_OVERHEAD, WeaveDriver
from plugstrip.netdrivers.domain import security
from plugstrip.netdrivers.domain.contract import Driver
from plugstrip.netdrivers.stores.factory import open_store
from plugstrip.netdrivers.stores.store import HOST_ID_FILE, STORE_FILE, Host, NetworkRecord

# In the state dir, written by a running serve: its listeners, admin URL and underlay.
RUNTIME_FILE = "serve.json"

T = TypeVar("T")


def add_commands(sub: Any, state_dir: str, ovsdb: str, store: str | None) -> None:
    net = sub.add_parser("net", help="plugstrip networks as the state store has them")
    net_sub = net.add_subparsers(required=True, metavar="ACTION")
    ls = net_sub.add_parser("ls", help="list plugstrip networks")
    ls.set_defaults(func=_net_ls)
    inspect = net_sub.add_parser("inspect", help="a network, its endpoints and devices")
    inspect.add_argument("network")
    inspect.set_defaults(func=_net_inspect)
    hosts = net_sub.add_parser("hosts", help="live hosts sharing the store, and their endpoints")
    hosts.set_defaults(func=_net_hosts)
    doctor = sub.add_parser("doctor", help="check what plugstrip networks need")
    doctor.set_defaults(func=_doctor)
    flows = sub.add_parser("flows", help="OpenFlow and datapath flows of a plugstrip/ovs network")
    flows.add_argument("network")
    flows.set_defaults(func=_flows)
    for parser in (ls, inspect, hosts, doctor, flows):
        store_options(parser, state_dir, store)
        parser.add_argument("--ovsdb", metavar="URL", default=ovsdb)


def store_options(parser: Any, state_dir: str, store: str | None) -> None:
    """Where an operator command finds the state: ``--state-dir`` and ``--store``."""
    parser.add_argument("--state-dir", metavar="DIR", default=state_dir)
    parser.add_argument(
        "--store",
        metavar="URL",
        default=store,
        help="etcd://... (default $PLUGSTRIP_STORE, else the embedded store)",
    )


def _service(args: argparse.Namespace) -> NetworkService:
    if args.store is None and not _has_state(args):
        path = Path(args.state_dir) / STORE_FILE
        raise ValueError(f"no plugstrip state at {path} (wrong --state-dir or --store?)")
    return NetworkService(open_store(args.store, args.state_dir), {})


async def read_store(args: argparse.Namespace, read: Callable[[NetworkService], Awaitable[T]]) -> T:
    """One read of the store, closed after."""
    service = _service(args)
    try:
        return await read(service)
    finally:
        await service.close()


async def _snapshot(args: argparse.Namespace) -> tuple[list[NetworkRecord], list[Attachment]]:
    return await read_store(args, NetworkService.snapshot)


# ---- net ls / inspect ------------------------------------------------------------------


def _net_ls(args: argparse.Namespace) -> int:
    records, attachments = asyncio.run(_snapshot(args))
    rows = [("NAME", "DRIVER", "SUBNET", "GATEWAY", "VNI", "ENDPOINTS")]
    for r in records:
        count = sum(a.network.id == r.id for a in attachments)
        rows.append((r.name, r.driver, str(r.subnet), str(r.gateway), str(r.vni), str(count)))
    print_table(rows)
    return 0


def _net_hosts(args: argparse.Namespace) -> int:
    async def read(service: NetworkService) -> tuple[list[Host], list[Attachment]]:
        return await service.store.hosts(), await service.attachments()

    hosts, attachments = asyncio.run(read_store(args, read))
    rows = [("HOST", "ADDRESS", "ENDPOINTS")]
    for h in hosts:
        count = sum(a.meta.host == h.id for a in attachments)
        rows.append((h.id, str(h.address), str(count)))
    print_table(rows)
    return 0


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _net_inspect(args: argparse.Namespace) -> int:
    records, attachments = asyncio.run(_snapshot(args))
    record = next((r for r in records if args.network in (r.name, r.id)), None)
    if record is None:
        record = next((r for r in records if r.id.startswith(args.network)), None)
    if record is None:
        raise ValueError(f"no plugstrip network {args.network!r}")
    network = to_network(record)
    driver = _drivers(args)[record.driver]
    endpoints = []
    for a in attachments:
        if a.network.id != record.id:
            continue
        endpoint = NetworkService.endpoint(a, "")
        endpoints.append(
            {
                # the container itself when it is plugged in its own namespace
                "holder": None if a.owner == a.meta.container else a.owner,
                "container": a.meta.container,
                "name": a.meta.name or None,
                "aliases": list(a.meta.aliases),
                "address": f"{a.address}/{record.subnet.prefixlen}",
                "address6": f"{a.address6}/{record.subnet6.prefixlen}" if record.subnet6 else None,
                "mac": a.mac,
                "interface": a.meta.ifname,
                "host": a.meta.host,
                "host_interface": driver.describe(network, endpoint)["host_interface"],
            }
        )
    doc = {
        "Name": record.name,
        "Id": record.id,
        "Driver": record.driver,
        "Subnet": str(record.subnet),
        "Gateway": str(record.gateway),
        "Subnet6": str(record.subnet6) if record.subnet6 else None,
        "VNI": record.vni,
        "Internal": record.internal,
        "Labels": record.labels,
        "Devices": driver.describe(network),
        "Endpoints": endpoints,
    }
    print(json.dumps(doc, indent=2))
    return 0


def _drivers(args: argparse.Namespace) -> dict[str, Driver]:
    """The driver table, for names and descriptions (none is connected)."""
    return make_drivers(DriverSettings(args.ovsdb))


# ---- doctor ----------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    status: str  # ok, warn, fail
    detail: str


def _doctor(args: argparse.Namespace) -> int:
    checks = asyncio.run(_run_checks(args))
    for c in checks:
        print(f"{c.status.upper():<5} {c.name}: {c.detail}")
    return 1 if any(c.status == "fail" for c in checks) else 0


async def _run_checks(args: argparse.Namespace) -> list[Check]:
    has_state = args.store is not None or _has_state(args)
    records, attachments = await _snapshot(args) if has_state else ([], [])
    checks = [await _check_vxlan(), await _check_ovs(args.ovsdb), _check_forward(records)]
    checks.append(await _check_mtu(args, records))
    checks.append(await _check_leftovers(args, records, attachments))
    if has_state:
        checks += await _check_datapaths(args, records, attachments)
    return checks


def _has_state(args: argparse.Namespace) -> bool:
    return (Path(args.state_dir) / STORE_FILE).exists()


async def _check_vxlan() -> Check:
    """Make (and remove) a VXLAN device: the only proof the kernel can."""
    probe = "psdoctor0"
    try:
        async with Netlink() as nl:
            await nl.ensure_link(probe, "vxlan", vxlan_id=16777000, vxlan_port=weave.VXLAN_PORT)
            await nl.delete_link(probe)
    except Exception as exc:
        return Check("kernel vxlan", "fail", f"cannot create a VXLAN device: {exc}")
    return Check("kernel vxlan", "ok", "VXLAN devices can be created")


async def _check_ovs(url: str) -> Check:
    """OVS reachable, and plugstrip's bridge's datapath open: its own port numbered LOCAL
    (a datapath that cannot open, say a second ovs-vswitchd holding it, numbers none)."""
    db = Ovsdb(url, timeout=3)
    try:
        types = await db.datapath_types()
        bridge = None
        if await db.has_bridge(ovs.INTEGRATION_BRIDGE):
            bridge = await db.interface(ovs.INTEGRATION_BRIDGE)
    except OvsdbUnavailable as exc:
        return Check("open vswitch", "warn", f"{exc} (only plugstrip/ovs needs it)")
    finally:
        await db.close()
    if bridge is not None and bridge[0] != ovs.LOCAL_PORT:
        return Check(
            "open vswitch",
            "fail",
            f"bridge {ovs.INTEGRATION_BRIDGE}'s datapath is not open"
            f" ({bridge[1] or 'its port has no OpenFlow number'}): is a second"
            " ovs-vswitchd running in this network namespace? (ps -e | grep ovs-vswitchd)",
        )
    chosen = detect_datapath()
    return Check(
        "open vswitch",
        "ok",
        f"reachable at {url}; datapaths {', '.join(types)}; plugstrip/ovs uses {chosen}"
        + (" (no openvswitch kernel module)" if chosen == "netdev" else ""),
    )


async def _check_datapaths(
    args: argparse.Namespace, records: list[NetworkRecord], attachments: list[Attachment]
) -> list[Check]:
    """Each driver's own check of its datapath (``Driver.verify``) against the store:
    this host's endpoints on it plugged in and bound, the security groups enforced."""
    groups = {g.name: g for g in await read_store(args, NetworkService.groups)}
    here = this_host(args)
    checks = []
    for name, driver in _drivers(args).items():
        local = [a for a in attachments if a.meta.is_on(here) and a.network.driver == name]
        networks = [to_network(r) for r in records if r.driver == name]
        endpoints = [NetworkService.endpoint(a, "") for a in local]
        wanted = host_policy(groups, attachments, name, here)
        try:
            findings = await driver.verify(networks, endpoints, wanted)
        finally:
            await driver.close()
        checks += [Check(f.check, f.status, f.detail) for f in findings]
    return checks


def host_policy(
    groups: dict[str, security.Group], attachments: list[Attachment], driver: str, here: str
) -> security.Policy:
    """The policy host ``here`` enforces on ``driver``'s datapath, as the store says: its
    ports' bindings and the security groups."""
    mine = [a for a in attachments if a.meta.is_on(here) and a.network.driver == driver]
    endpoints = [(address, a.groups, a in mine) for a in attachments for address in a.addresses]
    bindings = [security.binding(a.network.id, a.owner, a.mac, a.addresses) for a in mine]
    return security.policy(groups, endpoints, bindings)


def this_host(args: argparse.Namespace) -> str:
    try:
        return (Path(args.state_dir) / HOST_ID_FILE).read_text().strip()
    except OSError:
        return ""


def _check_forward(records: list[NetworkRecord]) -> Check:
    try:
        rules = subprocess.run(
            ["iptables", "-w", "-S"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError) as exc:
        return Check("forward policy", "warn", f"cannot read iptables: {exc}")
    policy = next((r.split()[2] for r in rules if r.startswith("-P FORWARD")), "ACCEPT")
    bridges = [weave.bridge_name(to_network(r)) for r in records if r.driver == WeaveDriver.name]
    missing = [b for b in bridges if not any(" ".join(firewall.accept_rule(b)) in r for r in rules)]
    if policy == "DROP" and missing:
        return Check(
            "forward policy", "fail", f"FORWARD drops and {', '.join(missing)} have no accept rule"
        )
    return Check("forward policy", "ok", f"FORWARD policy {policy}; bridge rules in place")


async def _check_mtu(args: argparse.Namespace, records: list[NetworkRecord]) -> Check:
    async with Netlink() as nl:
        underlay, source = await _underlay(args, nl)
        wrong = []
        for r in records:
            if r.driver != WeaveDriver.name:  # the kernel bridge is weave's (OVS: its own)
                continue
            name = weave.bridge_name(to_network(r))
            if await nl.index(name) is not None:
                mtu = int(await nl.link_attr(name, "mtu"))
                if mtu > underlay - VXLAN_OVERHEAD:
                    wrong.append(f"{name} {mtu}")
    if wrong:
        return Check("mtu", "fail", f"over underlay {underlay} ({source}) - 50: {', '.join(wrong)}")
    return Check(
        "mtu", "ok", f"underlay {underlay} ({source}), plugstrip devices at most {underlay - 50}"
    )


async def _underlay(args: argparse.Namespace, nl: Netlink) -> Underlay:
    """The running serve's underlay (it wrote it down), else the default route's device."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        doc = json.loads((Path(args.state_dir) / RUNTIME_FILE).read_text())["underlay"]
        return Underlay(int(doc["mtu"]), f"{doc['from']}, as serve found it")
    return await nl.underlay()


async def _check_leftovers(
    args: argparse.Namespace, records: list[NetworkRecord], attachments: list[Attachment]
) -> Check:
    drivers = _drivers(args).values()
    expected: set[str] = set()
    for driver in drivers:
        networks = [to_network(r) for r in records if r.driver == driver.name]
        endpoints = [
            NetworkService.endpoint(a, "") for a in attachments if a.network.driver == driver.name
        ]
        expected |= driver.owned(networks, endpoints)
    prefixes = tuple(p for driver in drivers for p in driver.prefixes)
    async with Netlink() as nl:
        found = {n for n in await nl.link_names() if n.startswith(prefixes)}
    stale = sorted(found - expected)
    if stale:
        return Check("leftovers", "warn", f"devices no network or endpoint owns: {stale}")
    return Check("leftovers", "ok", f"{len(found)} plugstrip devices, all accounted for")


# ---- flows -----------------------------------------------------------------------------


def _flows(args: argparse.Namespace) -> int:
    records, attachments = asyncio.run(_snapshot(args))
    record = next((r for r in records if args.network in (r.name, r.id)), None)
    if record is None or record.driver != ovs.OvsDriver.name:
        raise ValueError(f"no plugstrip/ovs network {args.network!r}")
    network = to_network(record)
    ports = {
        ovs.host_port_name(network, NetworkService.endpoint(a, ""))
        for a in attachments
        if a.network.id == record.id
    }
    tag = asyncio.run(_tag(args.ovsdb, record.id))
    run_dir = rundir(args.ovsdb)
    env = {**os.environ, "OVS_RUNDIR": run_dir}
    from ovs.flow.odp import ODPFlow
    from ovs.flow.ofp import OFPFlow

    of_text = subprocess.run(
        ["ovs-ofctl", "--names", "dump-flows", ovs.bridge_socket(args.ovsdb)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    print(f"# {record.name}: VLAN tag {tag} on {ovs.INTEGRATION_BRIDGE}, ports {sorted(ports)}")
    print("# OpenFlow flows that apply to it")
    for line in of_text.splitlines():
        if "actions=" not in line:
            continue
        flow = OFPFlow(line.strip())
        in_port, vlan = flow.match.get("in_port"), flow.match.get("dl_vlan")
        if (in_port is None or in_port in ports) and (vlan is None or int(vlan) == tag):
            print(f"{flow.info.get('n_packets', 0):>10} pkts  {line.strip()}")
    dp_text = subprocess.run(
        [
            "ovs-appctl",
            "-t",
            vswitchd_control(run_dir),
            "dpctl/dump-flows",
            "--names",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    print("# datapath flows of its traffic")
    for line in dp_text.splitlines():
        if not line.strip() or line.startswith("flow-dump"):
            continue
        flow = ODPFlow(line.strip())
        touches = flow.match.get("in_port") in ports or any(
            (kv.key == "output" and kv.value.get("port") in ports)
            or (kv.key == "push_vlan" and kv.value.get("vid") == tag)
            for kv in flow.actions_kv
        )
        if touches:
            print(f"{flow.info.get('packets', 0):>10} pkts  {line.strip()}")
    return 0


async def _tag(url: str, network_id: str) -> int:
    ids = await Ovsdb(url, timeout=3).bridge_ids(ovs.INTEGRATION_BRIDGE)
    return int(ids[f"net-{network_id}"])


def vswitchd_control(rundir: str) -> str:
    sockets = sorted(Path(rundir).glob("ovs-vswitchd.*.ctl"))
    if not sockets:
        raise ValueError(f"no ovs-vswitchd control socket in {rundir}")
    return str(sockets[-1])
