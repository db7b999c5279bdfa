"""Learn mode: the policy observing only, then the narrowest rule set that allows what each
client did.

Every call is checked against the strictest rule set (an empty allow-list, every power
refused, unknown fields refused). Each refusal names the option that would have allowed
it and the value to give it (``powers.Grant``: ``("cap_add", "NET_ADMIN")``,
``("allow", "GET /containers/**/json")``); the call is checked again with that option
widened, until it passes. What each call needed is one line of the record (JSON lines);
the learned rule set of a client is the union of its calls' grants, written in the
configuration's own YAML. Nothing is refused while learning, and nothing is rewritten.

``replay`` checks recorded calls against a configured policy (``plugstrip policy check``):
the operator sees what a rule set would refuse before it refuses it.

Ownership is not learned: which clients may see each other's objects is the operator's
decision about isolation, not something a client's calls ask for.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from plugstrip.adapters.policy.adapter import PolicyAdapter
from plugstrip.adapters.policy.powers import Daemon, Denied, Grant
from plugstrip.adapters.policy.rules import Rules
from plugstrip.proxy.contract import Call, Peer, Refuse
from plugstrip.proxy.docker_types import body_type

STRICTEST: dict[str, Any] = {"allow": [], "unknown_fields": "refuse"}
_MOST_GRANTS = 64  # each grant widens the rule set: a call needs few
_SEEN_REMEMBERED = 65536  # calls recorded once each (pollers repeat the same call)
_SECRETS = "Env"  # values a record never holds: the environment (the audit log neither)
_REDACTED = "<redacted>"
_PATH_OPTIONS = ("bind_mounts", "cgroup_parent")  # a prefix allows what is under it


def client_match(peer: Peer) -> dict[str, Any]:
    """The ``match`` that tells this client apart, as the policy's clients match."""
    if peer.tls_subject:
        return {"cert_cn": peer.tls_subject}
    if peer.uid is not None:
        return {"uid": peer.uid}
    return {"transport": peer.transport}


def _peer(match: dict[str, Any]) -> Peer:
    if "cert_cn" in match:
        return Peer("tcp", tls_subject=str(match["cert_cn"]))
    if "uid" in match:
        return Peer("unix", uid=int(match["uid"]))
    return Peer(str(match.get("transport", "tcp")))


@dataclass(frozen=True)
class Recorded:
    """One call as learned: who, what (environment values redacted), what it needed."""

    client: dict[str, Any]
    method: str
    path: str
    query: str = ""
    body: Any = None
    unreadable: bool = False  # a body the policy cannot read (it refuses those)
    grants: list[Grant] = field(default_factory=list)
    not_learned: str | None = None  # a refusal no option allows

    def line(self) -> str:
        doc = {k: v for k, v in self.__dict__.items() if _given(v)}
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> Recorded:
        doc = json.loads(text)
        doc["grants"] = [tuple(g) for g in doc.get("grants", ())]
        return cls(**doc)


def _given(value: Any) -> bool:
    return value is not None and value is not False and value != "" and value != []


async def grants_for(
    method: str, path: str, query: str, body: Any, daemon: Daemon | None
) -> tuple[list[Grant], str | None]:
    """What a call needs beyond the strictest rule set, and why it cannot be allowed by
    any option, if so."""
    rules = Rules.from_options(STRICTEST)
    grants: list[Grant] = []
    try:
        hits = rules.hits(method, path, query, body)
        for _ in range(_MOST_GRANTS):
            try:
                rules.check_route(method, path, query)
                await rules.check_asked(method, path, hits, body, daemon)
                return grants, None
            except Denied as refusal:
                if refusal.grant is None or refusal.grant in grants:
                    return grants, refusal.message
                grants.append(refusal.grant)
                rules = rules.widened(refusal.grant)
    except Refuse as refusal:
        return grants, refusal.message
    return grants, f"needs more than {_MOST_GRANTS} grants"


class PolicyLearner:
    """The adapter of ``plugstrip policy learn``: a pre-hook on every call that records
    what the call needed and lets it pass as sent."""

    def __init__(self, record: str) -> None:
        self.record = Path(record)
        self.daemon: Daemon | None = None
        self._file: TextIO | None = None
        self._seen: set[str] = set()

    def bind_daemon(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def start(self) -> None:
        self.record.parent.mkdir(parents=True, exist_ok=True)
        # request bodies, whatever is redacted: for the host's root only
        fd = os.open(self.record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    async def pre_hook(self, call: Call) -> None:
        req = call.request
        unreadable = req.streamed and body_type(req.method, req.path) is not None
        body: Any = None
        grants: list[Grant] = []
        why: str | None = None
        try:
            body = req.json() if req.body else None
            grants, why = await grants_for(req.method, req.path, req.query, body, self.daemon)
        except Refuse as refusal:  # a body the daemon would refuse too (a key twice)
            why = refusal.message
        if unreadable:
            why = "a body the policy cannot read (it refuses those)"
        who = client_match(call.peer)
        body = _redacted(body)
        self._write(Recorded(who, req.method, req.path, req.query, body, unreadable, grants, why))

    def _write(self, recorded: Recorded) -> None:
        line = recorded.line()
        if line in self._seen or self._file is None:
            return
        if len(self._seen) >= _SEEN_REMEMBERED:
            self._seen.clear()
        self._seen.add(line)
        self._file.write(line + "\n")
        self._file.flush()


def _redacted(value: Any) -> Any:
    value = copy.deepcopy(value)
    for obj in _objects(value):
        env = obj.get(_SECRETS)
        if isinstance(env, list):
            obj[_SECRETS] = [f"{str(e).split('=', 1)[0]}={_REDACTED}" for e in env]
    return value


def _objects(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _objects(item)


def read_record(path: str | Path) -> list[Recorded]:
    with open(path, encoding="utf-8") as f:
        return [Recorded.parse(line) for line in f if line.strip()]


# ---- what was learned, as configuration ---------------------------------------------------


def learned_config(records: Iterable[Recorded]) -> dict[str, Any]:
    """The narrowest policy allowing every recorded call: per client, the union of its
    calls' grants over the strictest rule set."""
    grants: dict[str, list[Grant]] = {}
    matches: dict[str, dict[str, Any]] = {}
    for recorded in records:
        key = json.dumps(recorded.client, sort_keys=True)
        matches.setdefault(key, recorded.client)
        have = grants.setdefault(key, [])
        have += [g for g in recorded.grants if g not in have]
    clients = []
    for key, match in matches.items():
        rules = Rules.from_options(STRICTEST)
        for grant in grants[key]:
            rules = rules.widened(grant)
        clients.append({"match": match, "rules": _tidy(rules.options())})
    return {
        "adapters": {"policy": {"use": "policy", "options": {"clients": clients}}},
        "endpoints": {"* /**": {"pre": ["policy"], "post": ["policy"]}},
    }


def _tidy(options: dict[str, Any]) -> dict[str, Any]:
    """Lists sorted, a path under another one dropped."""
    out = {}
    for name, value in options.items():
        if isinstance(value, list):
            value = sorted(set(value))
            if name in _PATH_OPTIONS:
                value = [p for p in value if not any(_under(p, q) for q in value if q != p)]
        out[name] = value
    return out


def _under(path: str, root: str) -> bool:
    root = posixpath.normpath("/" + root.strip("/"))
    return posixpath.normpath(path).startswith(root.rstrip("/") + "/")


def config_text(records: list[Recorded]) -> str:
    """``learned_config`` in YAML, with a header and what could not be learned."""
    lines = [
        f"# plugstrip policy learn, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}:"
        f" {len(records)} distinct calls",
    ]
    for recorded in records:
        if recorded.not_learned:
            who = ",".join(f"{k}={v}" for k, v in recorded.client.items())
            lines.append(
                f"# not allowed by any option: {who} {recorded.method} {recorded.path}:"
                f" {recorded.not_learned}"
            )
    body = yaml.safe_dump(learned_config(records), sort_keys=False, default_flow_style=False)
    return "\n".join(lines) + "\n" + body


# ---- replay -----------------------------------------------------------------------------


async def replay(
    policy: PolicyAdapter, records: Iterable[Recorded], daemon: Daemon | None
) -> list[tuple[Recorded, Refuse]]:
    """Each recorded call checked by ``policy``'s rules as if it came now: the refusals.
    Ownership is not replayed (the objects of the recording's time are gone or not its
    client's)."""
    refused = []
    for recorded in records:
        try:
            rules = policy.rules_for(_peer(recorded.client))
            if rules.unrestricted:
                continue
            rules.check_route(recorded.method, recorded.path, recorded.query)
            if recorded.unreadable:
                raise Refuse(400, "plugstrip policy: this request's body must be JSON it can read")
            hits = rules.hits(recorded.method, recorded.path, recorded.query, recorded.body)
            await rules.check_asked(recorded.method, recorded.path, hits, recorded.body, daemon)
        except Refuse as refusal:
            refused.append((recorded, refusal))
    return refused
