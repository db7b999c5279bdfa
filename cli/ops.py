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
import re
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from netaddr import IPAddress

from plugstrip.netdrivers import firewall, nft, ovs, security, weave
from plugstrip.netdrivers.contract import Driver
from plugstrip.netdrivers.drivers import DriverSettings, make_drivers
from plugstrip.netdrivers.netlink import Netlink, Underlay
from plugstrip.netdrivers.ovsdb import Ovsdb, OvsdbUnavailable, detect_datapath, rundir
from plugstrip.netdrivers.service import Attachment, NetworkService, to_network
from plugstrip.netdrivers.store import HOST_ID_FILE, STORE_FILE, Host, NetworkRecord
from plugstrip.netdrivers.stores import open_store
from plugstrip.netdrivers.weave import VXLAN_OVERHEAD, WeaveDriver

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
        count = sum(a.meta.get("host") == h.id for a in attachments)
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
                "holder": None if a.owner == a.meta.get("container") else a.owner,
                "container": a.meta.get("container"),
                "name": a.meta.get("name"),
                "aliases": a.meta.get("aliases", []),
                "address": f"{a.address}/{record.subnet.prefixlen}",
                "address6": f"{a.address6}/{record.subnet6.prefixlen}" if record.subnet6 else None,
                "mac": a.mac,
                "interface": a.meta.get("ifname"),
                "host": a.meta.get("host"),
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
        checks += await _check_bindings(args, attachments)
        checks += await _check_security_groups(args, attachments)
    return checks


async def _check_bindings(args: argparse.Namespace, attachments: list[Attachment]) -> list[Check]:
    """Each local endpoint's port on its datapath (weave: the link up on its network's
    bridge; ovs: attached, numbered) and bound to the endpoint as the store says: its MAC
    and addresses, none missing, none extra (weave: its chain in nftables' bridge table;
    ovs: its port's table-0 flows)."""
    here = this_host(args)
    local = [a for a in attachments if a.meta.get("host", here) == here]
    checks = []
    weave_local = [a for a in local if a.network.driver == WeaveDriver.name]
    if weave_local:
        chains = _nft_json(["list", "table", "bridge", nft.PORTS])
        detached, differing = [], []
        async with Netlink() as nl:
            for a in weave_local:
                port = weave.port_name(a.network.id, a.owner)
                bridge = await nl.index(weave.bridge_name(to_network(a.network)))
                index = await nl.index(port)
                if index is None or bridge is None:
                    detached.append(f"{port} (missing)")
                    continue
                master = await nl.link_attr(port, "IFLA_MASTER")
                state = await nl.link_attr(port, "IFLA_OPERSTATE")
                if master != bridge or state == "DOWN":
                    detached.append(f"{port} ({'down' if state == 'DOWN' else 'off its bridge'})")
                    continue
                if (wrong := _weave_bound(chains, port, _binding_of(a))) is not None:
                    differing.append(f"{port} ({wrong})")
        checks.append(_binding_check(WeaveDriver.name, len(weave_local), differing, detached))
    ovs_local = [a for a in local if a.network.driver == ovs.OvsDriver.name]
    if ovs_local:
        db = Ovsdb(args.ovsdb)
        try:
            ofports = await db.ofports()
        except OvsdbUnavailable as exc:
            return [*checks, Check(f"port bindings ({ovs.OvsDriver.name})", "fail", str(exc))]
        finally:
            await db.close()
        listing = _flow_listing(args)
        detached, differing = [], []
        for a in ovs_local:
            port = ovs.port_name(a.network.id, a.owner)
            if port not in ofports:
                detached.append(port)
            elif (wrong := _ovs_bound(listing, ofports[port], _binding_of(a))) is not None:
                differing.append(f"{port} ({wrong})")
        checks.append(_binding_check(ovs.OvsDriver.name, len(ovs_local), differing, detached))
    return checks


def _binding_of(a: Attachment) -> security.Binding:
    return security.binding(a.network.id, a.owner, a.mac, a.addresses)


def _weave_bound(listing: list[dict[str, Any]], port: str, bound: security.Binding) -> str | None:
    """What differs between a port's chain in the bridge table and its binding (None:
    nothing): the MAC and the addresses its ``!=`` matches let through."""
    chain = f"port_{port.replace('-', '_')}"
    rules = [r["rule"]["expr"] for r in listing if r.get("rule", {}).get("chain") == chain]
    if not rules:
        return "no binding"
    found: dict[str, set[str]] = {"ether": set(), "ip": set(), "ip6": set()}
    for expr in rules:
        for statement in expr:
            match = statement.get("match", {})
            payload = match.get("left", {}).get("payload", {})
            if match.get("op") != "!=" or payload.get("field") != "saddr":
                continue
            right = match["right"]
            values = right["set"] if isinstance(right, dict) and "set" in right else [right]
            if payload.get("protocol") in found:
                found[payload["protocol"]] |= {str(v) for v in values}
    wanted = {
        "ether": {bound.mac},
        "ip": {str(a) for a in bound.of(4)} or {"255.255.255.255"},
        "ip6": {"::", *(str(a) for a in bound.of(6))},
    }
    wrong = [
        f"{kind}: has {sorted(found[kind])}, the store says {sorted(wanted[kind])}"
        for kind in wanted
        if found[kind] != wanted[kind]
    ]
    return "; ".join(wrong) or None


def _ovs_bound(listing: str, number: int, bound: security.Binding) -> str | None:
    """What differs between a port's table-0 flows and its binding (None: nothing): the
    MAC and addresses its flows pass on."""
    mine = [line for line in listing.splitlines() if re.search(rf"\bin_port={number}\b", line)]
    passed = [line for line in mine if "priority=300" in line and "resubmit(,5)" in line]
    if not passed:
        return "no binding"
    macs = {m for line in passed for m in re.findall(r"dl_src=([0-9a-f:]+)", line)}
    addresses = {
        str(IPAddress(a))
        for line in passed
        for a in re.findall(r"(?:nw_src|ipv6_src|arp_spa)=([0-9a-f.:]+)", line)
    }
    wanted = {str(a) for a in bound.addresses} | {"0.0.0.0", "::"}
    wrong = []
    if macs != {bound.mac}:
        wrong.append(f"MAC: has {sorted(macs)}, the store says {bound.mac}")
    if addresses != wanted:
        wrong.append(f"addresses: has {sorted(addresses)}, the store says {sorted(wanted)}")
    return "; ".join(wrong) or None


def _nft_json(args: list[str]) -> list[dict[str, Any]]:
    out = subprocess.run(["nft", "-j", *args], capture_output=True, text=True)
    return list(json.loads(out.stdout).get("nftables", [])) if out.returncode == 0 else []


LOCAL_PORT = 65534  # OpenFlow's number of a bridge's own port


def _binding_check(driver: str, count: int, unbound: list[str], detached: list[str]) -> Check:
    if detached and driver == ovs.OvsDriver.name:
        return Check(
            f"port bindings ({driver})",
            "fail",
            f"ports not attached by ovs-vswitchd (no OpenFlow number): {', '.join(detached)};"
            " its datapath may not be open (is a second ovs-vswitchd running here?)",
        )
    if detached:
        return Check(
            f"port bindings ({driver})",
            "fail",
            f"ports not on their network's bridge: {', '.join(detached)} (restart the"
            " container, or plugstrip serve: it plugs every endpoint in at start)",
        )
    if unbound:
        return Check(
            f"port bindings ({driver})",
            "fail",
            f"ports whose binding is missing or differs from the store's: {', '.join(unbound)}"
            " (restart plugstrip serve: it binds every port at start)",
        )
    return Check(f"port bindings ({driver})", "ok", f"{count} port(s) bound to their endpoints")


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
    if bridge is not None and bridge[0] != LOCAL_PORT:
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


async def _check_security_groups(
    args: argparse.Namespace, attachments: list[Attachment]
) -> list[Check]:
    """Each driver's datapath against the security groups the store says this host must
    enforce: the guarded endpoints and the groups' members, none missing, none extra."""
    groups = {g.name: g for g in await read_store(args, NetworkService.groups)}
    here = this_host(args)
    checks = []
    for driver, read in ((WeaveDriver.name, _nft_listing), (ovs.OvsDriver.name, _flow_listing)):
        wanted = host_policy(groups, attachments, driver, here)
        try:
            text = read(args)
        except (OSError, subprocess.CalledProcessError) as exc:
            checks.append(Check(f"security groups ({driver})", "warn", f"cannot read: {exc}"))
            continue
        # (direction, address): the nft chains' or the OpenFlow dispatch flows' targets
        guarded = {("in", str(g.address)) for g in wanted.guarded} | {
            ("out", str(g.address)) for g in wanted.egress_guarded()
        }
        found = {
            (way, address)
            for way, chain, field, table in (("in", "ep", "dst", 2), ("out", "out", "src", 3))
            for pattern in (
                rf"([0-9a-f.:]+) : jump {chain}_[0-9a-f_]+",
                rf"(?:nw_{field}|ipv6_{field})=([0-9a-f.:]+) actions=resubmit\(,{table}\)",
            )
            for address in re.findall(pattern, text)
        }
        members = {str(m) for ms in wanted.members.values() for m in ms}
        missing = [f"{w} {a}" for w, a in sorted(guarded - found)]
        missing += sorted(m for m in members if m not in text)
        extra = [f"{w} {a}" for w, a in sorted(found - guarded)]
        if missing or extra:
            detail = f"missing {missing or 'nothing'}, extra {extra or 'nothing'}"
            checks.append(Check(f"security groups ({driver})", "fail", detail))
        else:
            checks.append(
                Check(
                    f"security groups ({driver})",
                    "ok",
                    f"{len(wanted.guarded)} guarded endpoint(s)"
                    f" ({len(wanted.egress_guarded())} with egress rules),"
                    f" {len(members)} member address(es)",
                )
            )
    return checks


def host_policy(
    groups: dict[str, security.Group], attachments: list[Attachment], driver: str, here: str
) -> security.Policy:
    """The security groups' policy host ``here`` enforces on ``driver``'s datapath, as
    the store says (bindings aside)."""
    endpoints = [
        (address, a.groups, a.meta.get("host", here) == here and a.network.driver == driver)
        for a in attachments
        for address in a.addresses
    ]
    return security.policy(groups, endpoints)


def this_host(args: argparse.Namespace) -> str:
    try:
        return (Path(args.state_dir) / HOST_ID_FILE).read_text().strip()
    except OSError:
        return ""


def _nft_listing(args: argparse.Namespace, family: str = "inet") -> str:
    table = nft.TABLE if family == "inet" else nft.PORTS
    out = subprocess.run(["nft", "list", "table", family, table], capture_output=True, text=True)
    return out.stdout  # no table: nothing guarded (or bound) here


def _flow_listing(args: argparse.Namespace) -> str:
    out = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", ovs.bridge_socket(args.ovsdb)],
        capture_output=True,
        text=True,
    )
    return out.stdout  # no bridge: nothing guarded here


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
