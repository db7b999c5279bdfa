"""``plugstrip sg``: security groups as the store has them, changed in it (every host's
plugstrip enforces a change within a second)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
from typing import Any, Literal

from netaddr import AddrFormatError, IPAddress

from plugstrip.cli.ops import (
    host_policy,
    print_table,
    read_store,
    store_options,
    this_host,
    vswitchd_control,
)
from plugstrip.netdrivers.control.service import Attachment, NetworkService
from plugstrip.netdrivers.datapath import nft, ovs, ovs_flows
from plugstrip.netdrivers.datapath.drivers import DEFAULT_OVSDB
from plugstrip.netdrivers.datapath.ovsdb import Ovsdb, rundir
from plugstrip.netdrivers.domain import security


def add_commands(sub: Any, state_dir: str, store: str | None) -> None:
    sg = sub.add_parser("sg", help="security groups: stateful rules between containers")
    actions = sg.add_subparsers(required=True, metavar="ACTION")
    create = actions.add_parser("create", help="a group with no rules (its members take nothing)")
    create.add_argument("group")
    create.set_defaults(func=_create)
    rules = []
    for verb, func, text in (("allow", _allow, "add a rule"), ("revoke", _revoke, "remove one")):
        rule = actions.add_parser(verb, help=text)
        rule.add_argument("group")
        peer = rule.add_mutually_exclusive_group(required=True)
        peer.add_argument("--from", dest="source", help="ingress: from a group, a CIDR or any")
        peer.add_argument("--to", dest="dest", help="egress: to a group, a CIDR or any")
        rule.add_argument("--proto", default="any", choices=security.PROTOS)
        rule.add_argument("--port", help="a port or a range N-M (tcp and udp)")
        rule.set_defaults(func=func)
        rules.append(rule)
    ls = actions.add_parser("ls", help="the groups, their rule and endpoint counts")
    ls.set_defaults(func=_ls)
    inspect = actions.add_parser("inspect", help="a group's rules and its endpoints, by host")
    inspect.add_argument("group")
    inspect.set_defaults(func=_inspect)
    rm = actions.add_parser("rm", help="remove a group (refused while endpoints are in it)")
    rm.add_argument("group")
    rm.set_defaults(func=_rm)
    trace = actions.add_parser(
        "trace",
        help="whether this host's datapath passes a new connection, and which rule decides"
        " (exit status 0: it passes, 1: it is dropped)",
    )
    trace.add_argument("src", help="a container (name, id) or an address")
    trace.add_argument("dst", help="a container on this host (name, id) or its address")
    trace.add_argument("port", nargs="?", type=int, help="the destination port (tcp, udp)")
    trace.add_argument("--proto", default="tcp", choices=[p for p in security.PROTOS if p != "any"])
    trace.add_argument("-6", dest="ipv6", action="store_true", help="their IPv6 addresses")
    trace.add_argument("--ovsdb", default=DEFAULT_OVSDB, help="plugstrip/ovs: its OVSDB")
    trace.set_defaults(func=_trace)
    for parser in (create, *rules, ls, inspect, rm, trace):
        store_options(parser, state_dir, store)


def _create(args: argparse.Namespace) -> int:
    asyncio.run(read_store(args, lambda s: s.create_group(args.group)))
    print(args.group)
    return 0


def _rule(args: argparse.Namespace) -> security.Rule:
    if args.dest is not None:
        return security.parse_rule(args.dest, args.proto, args.port, egress=True)
    return security.parse_rule(args.source, args.proto, args.port)


def _allow(args: argparse.Namespace) -> int:
    rule = _rule(args)
    asyncio.run(read_store(args, lambda s: s.allow(args.group, rule)))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    rule = _rule(args)
    asyncio.run(read_store(args, lambda s: s.revoke(args.group, rule)))
    return 0


def _rm(args: argparse.Namespace) -> int:
    asyncio.run(read_store(args, lambda s: s.delete_group(args.group)))
    return 0


def _ls(args: argparse.Namespace) -> int:
    async def read(service: NetworkService) -> list[tuple[str, ...]]:
        attachments = await service.attachments()
        return [
            (g.name, str(len(g.rules)), str(sum(g.name in a.groups for a in attachments)))
            for g in await service.groups()
        ]

    print_table([("NAME", "RULES", "ENDPOINTS"), *asyncio.run(read_store(args, read))])
    return 0


def _inspect(args: argparse.Namespace) -> int:
    async def read(service: NetworkService) -> dict[str, Any]:
        group = next((g for g in await service.groups() if g.name == args.group), None)
        if group is None:
            raise ValueError(f"security group {args.group} not found")
        return {
            "Name": group.name,
            "Rules": [
                {
                    "Direction": "egress" if r.egress else "ingress",
                    "To" if r.egress else "From": r.peer,
                    "Proto": r.proto,
                    "Ports": r.port_text(),
                }
                for r in group.rules
            ],
            "Endpoints": [
                {
                    "Container": a.meta.container,
                    "Name": a.meta.name or None,
                    "Network": a.network.name,
                    "Address": str(a.address),
                    "Host": a.meta.host,
                }
                for a in await service.group_members(group.name)
            ],
        }

    print(json.dumps(asyncio.run(read_store(args, read)), indent=2))
    return 0


def _trace(args: argparse.Namespace) -> int:
    if (args.port is None) != (args.proto in ("icmp", "icmpv6")):
        raise ValueError(f"{args.proto}: {'a port' if args.port is None else 'no port'}, please")
    groups, attachments = asyncio.run(read_store(args, _groups_and_endpoints))
    here = this_host(args)
    dst = _endpoint(attachments, args.dst)
    if dst is None or not dst.meta.is_on(here):
        raise ValueError(f"{args.dst}: no plugstrip endpoint on this host (trace on its host)")
    src = _endpoint(attachments, args.src, dst.network.id)
    version: Literal[4, 6] = 6 if args.ipv6 else 4
    dst_address = dst.address if version == 4 else dst.address6
    src_address = _address_of(src, args.src, version)
    if dst_address is None:
        raise ValueError(f"{args.dst}: no IPv{version} address on {dst.network.name}")
    probe = security.Probe(src_address, dst_address, args.proto, args.port)
    driver = dst.network.driver
    if driver == ovs.OvsDriver.name:
        verdict = _ovs_verdict(args, probe, src, dst, here)
    else:
        listing = subprocess.run(
            ["nft", "-j", "list", "table", "inet", nft.TABLE], capture_output=True, text=True
        )
        # no table: nothing guarded here, so everything passes (the forward chain's policy)
        verdict = nft.verdict(listing.stdout or '{"nftables": []}', probe)
    counted = host_policy(groups, attachments, driver, here).counted()
    what = f"{args.proto}" + (f"/{args.port}" if args.port is not None else "")
    print(
        f"{'allowed' if verdict.allowed else 'dropped'}: {args.src} ({probe.src}) -> "
        f"{args.dst} ({probe.dst}) {what} on {dst.network.name} ({driver})"
    )
    for i, counter in enumerate(verdict.counters):
        label = "decided by" if i == len(verdict.counters) - 1 else "passed"
        print(f"  {label}: {_described(counted.get(counter), counter)}")
    if not verdict.counters:
        print("  decided by: no security group (neither end is guarded here)")
    for step in verdict.steps:
        print(f"    {step}")
    return 0 if verdict.allowed else 1


async def _groups_and_endpoints(
    service: NetworkService,
) -> tuple[dict[str, security.Group], list[Attachment]]:
    return {g.name: g for g in await service.groups()}, await service.attachments()


def _endpoint(
    attachments: list[Attachment], name: str, network: str | None = None
) -> Attachment | None:
    """The endpoint ``name`` (a container's name or id, or an address) means, on
    ``network`` where given."""
    for a in attachments:
        if network is not None and a.network.id != network:
            continue
        container = a.meta.container or a.owner
        names = {a.meta.name, *(str(x) for x in a.addresses)}
        if name in names or (len(name) >= 4 and container.startswith(name)):
            return a
    return None


def _address_of(src: Attachment | None, text: str, version: Literal[4, 6]) -> IPAddress:
    if src is not None:
        found = src.address if version == 4 else src.address6
        if found is None:
            raise ValueError(f"{text}: no IPv{version} address on {src.network.name}")
        return found
    try:
        return IPAddress(text, version)
    except (AddrFormatError, ValueError):
        raise ValueError(
            f"{text}: not an endpoint on the destination's network, nor an IPv{version} address"
        ) from None


def _described(counted: security.Counted | None, counter: str) -> str:
    if counter in (security.SPOOFED, security.FLOOD):
        return f"the ports' bindings ({counter})"
    if counted is None:
        return f"counter {counter}, which the store's groups do not name (a drifted datapath?)"
    if counted.reason:
        return f"no rule of {counted.group} ({counted.direction}) allows it"
    return f'rule "{counted.rule}" of group {counted.group} ({counted.direction})'


def _ovs_verdict(
    args: argparse.Namespace,
    probe: security.Probe,
    src: Attachment | None,
    dst: Attachment,
    here: str,
) -> security.Verdict:
    """``ofproto/trace`` of the probe, from the source's port if it is here, else from a
    tunnel of the network (or the bridge's own port)."""
    in_port = asyncio.run(_in_port(args.ovsdb, src, dst, here))
    src_mac = src.mac if src is not None else "02:00:00:00:00:01"
    flow = ovs_flows.trace_flow(probe, in_port, src_mac, dst.mac)
    run_dir = rundir(args.ovsdb)
    trace = [ovs.INTEGRATION_BRIDGE, flow, "--ct-next", "trk,new"]
    out = subprocess.run(
        ["ovs-appctl", "-t", vswitchd_control(run_dir), "ofproto/trace", *trace],
        capture_output=True,
        text=True,
        env={**os.environ, "OVS_RUNDIR": run_dir},
    )
    if out.returncode != 0:
        raise ValueError(f"ofproto/trace: {out.stderr.strip()}")
    return ovs_flows.verdict(out.stdout)


async def _in_port(url: str, src: Attachment | None, dst: Attachment, here: str) -> int | str:
    db = Ovsdb(url)
    try:
        ofports = await db.ofports()
        ports = await db.ports_with("network", dst.network.id)
    finally:
        await db.close()
    if src is not None and src.meta.is_on(here):
        return ofports.get(ovs.port_name(src.network.id, src.owner), "LOCAL")
    tunnels = [n for n in ports if n.startswith(ovs.TUNNEL_PREFIX) and n in ofports]
    return ofports[tunnels[0]] if tunnels else "LOCAL"
