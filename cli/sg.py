"""``plugstrip sg``: security groups as the store has them, changed in it (every host's
plugstrip enforces a change within a second)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from plugstrip.cli.ops import print_table, read_store, store_options
from plugstrip.netdrivers import security
from plugstrip.netdrivers.service import NetworkService


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
    for parser in (create, *rules, ls, inspect, rm):
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
                    "Container": a.meta.get("container"),
                    "Name": a.meta.get("name"),
                    "Network": a.network.name,
                    "Address": str(a.address),
                    "Host": a.meta.get("host"),
                }
                for a in await service.group_members(group.name)
            ],
        }

    print(json.dumps(asyncio.run(read_store(args, read)), indent=2))
    return 0
