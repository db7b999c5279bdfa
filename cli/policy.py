"""``plugstrip policy``: learn the narrowest policy from what clients do, and check a policy
against what they did, before it refuses anything (``plugstrip.adapters.policy.learn``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plugstrip.adapters.policy import PolicyAdapter
from plugstrip.adapters.policy.learn import config_text, read_record, replay
from plugstrip.cli.serve import UsageError, serve_command
from plugstrip.proxy.addresses import SocketAddress
from plugstrip.proxy.config import Config, load_file
from plugstrip.proxy.docker_api import DockerApi

RECORD_FILE = "policy-learn.jsonl"
_UNITS = {"s": 1, "m": 60, "h": 3600}


def add_commands(
    sub: Any, serve_arguments: Callable[[argparse.ArgumentParser], None], upstream: str
) -> None:
    policy = sub.add_parser("policy", help="learn a policy from what clients do; check one")
    actions = policy.add_subparsers(required=True, metavar="ACTION")
    learn = actions.add_parser(
        "learn",
        help="serve with the policy observing only, then print the narrowest rule set "
        "per client that allows what each did",
    )
    serve_arguments(learn)
    learn.add_argument(
        "--for",
        dest="learn_for",
        type=_duration,
        metavar="DURATION",
        help="learn this long (90s, 10m, 1h), then print (default: until SIGINT or SIGTERM)",
    )
    learn.add_argument(
        "--record",
        dest="learn_record",
        metavar="FILE",
        help=f"the calls as learned, JSON lines, for `policy check` (default: "
        f"STATE_DIR/{RECORD_FILE}, started afresh)",
    )
    learn.add_argument(
        "--from",
        dest="learn_from",
        metavar="RECORD",
        help="do not serve: learn from a record made before",
    )
    learn.add_argument("-o", "--out", metavar="FILE", help="default: standard output")
    learn.set_defaults(func=_learn)
    check = actions.add_parser(
        "check", help="replay a record against a configuration's policy: what it would refuse"
    )
    check.add_argument("record", metavar="RECORD")
    check.add_argument("--config", required=True, metavar="FILE", help="adapters.yml")
    check.add_argument(
        "--upstream",
        metavar="URL",
        default=os.environ.get("PLUGSTRIP_UPSTREAM", upstream),
        help="the daemon the checks ask (a container's users, a volume's options)",
    )
    check.set_defaults(func=_check)


def _duration(text: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration as 90s, 10m or 1h")
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def _learn(args: argparse.Namespace) -> int:
    if args.learn_from is None:
        if args.policy_from_env:
            raise UsageError("policy learn observes only: it cannot take --policy-from-env")
        if args.config:
            _no_policy(load_file(args.config), args.config)
        record = Path(args.learn_record or Path(args.state_dir) / RECORD_FILE)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.unlink(missing_ok=True)  # what the clients do now, not what they did before
        args.learn_record = str(record)
        status = serve_command(args)
        if status != 0:
            return status
    records = read_record(args.learn_from or args.learn_record)
    text = config_text(records)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _no_policy(config: Config, path: str) -> None:
    for spec in config.adapters.values():
        if _is_policy(spec.kind, spec.target):
            raise UsageError(
                f"{path}: adapters.{spec.name} is a policy, and policy learn observes only: "
                "learn with a configuration without it"
            )


def _is_policy(kind: str, target: str) -> bool:
    return (kind == "entrypoint" and target == "policy") or target.endswith(":PolicyAdapter")


def _check(args: argparse.Namespace) -> int:
    config = load_file(args.config)
    policies = [
        PolicyAdapter(**spec.options)
        for spec in config.adapters.values()
        if _is_policy(spec.kind, spec.target)
    ]
    if not policies:
        raise UsageError(f"{args.config}: no adapter uses the policy")
    records = read_record(args.record)
    return asyncio.run(_replay_all(policies, records, SocketAddress.parse(args.upstream)))


async def _replay_all(
    policies: list[PolicyAdapter], records: list[Any], upstream: SocketAddress
) -> int:
    daemon = DockerApi(upstream)
    refused = 0
    try:
        for policy in policies:
            for recorded, refusal in await replay(policy, records, daemon):
                who = ",".join(f"{k}={v}" for k, v in recorded.client.items())
                target = f"{recorded.path}?{recorded.query}" if recorded.query else recorded.path
                print(f"{who} {recorded.method} {target}: {refusal.status} {refusal.message}")
                refused += 1
    finally:
        await daemon.close()
    print(f"{refused} of {len(records)} recorded calls would be refused", file=sys.stderr)
    return 1 if refused else 0
