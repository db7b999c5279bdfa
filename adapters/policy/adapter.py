"""The rules people run docker-socket-proxy and sockguard for, per client, as hooks.

::

    adapters:
      policy:
        use: policy
        options:
          clients:                          # first match wins; none matching: refused
            - match: {uid: 0}
              rules: {}                     # an empty rule set: everything
            - match: {cert_cn: ci-runner}
              rules: {bind_mounts: ["/srv/ci"]}
            - match: {}                     # anyone else
              rules: {read_only: true}
          ownership: true                   # clients see and touch only what they made
    endpoints:
      "* /**": {pre: [policy], post: [policy]}

Without ``clients`` the options are one rule set for everyone. A rule set that names any
option refuses every power it does not allow (``rules.Rules``: privileged, host
namespaces, capabilities, devices, security options, host paths, exec as root, swarm,
services, plugins), on every route that grants it. A client is told apart by its unix
peer credentials or its verified TLS certificate, never by its address.

With ``ownership`` the objects a client creates (containers, networks, volumes, execs)
carry its identity in a label; lists show it only its own, and anything else it names
answers 404 as if absent, unless its rule set says ``see_all``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

from plugstrip.adapters.policy.ownership import Ownership
from plugstrip.adapters.policy.rules import BUILD, INSPECT, Daemon, Rules, refuse
from plugstrip.proxy.contract import Call, Peer, Refuse
from plugstrip.proxy.docker_types import body_type

_MATCH_KEYS = {"uid", "gid", "cert_cn", "cert_san", "transport"}
_PEERS_REMEMBERED = 4096
REDACTED = "<redacted by plugstrip>"


@dataclass(frozen=True)
class ClientRules:
    match: dict[str, list[Any]]
    rules: Rules

    def matches(self, peer: Peer) -> bool:
        facts: dict[str, Iterable[Any]] = {
            "uid": () if peer.uid is None else (peer.uid,),
            "gid": () if peer.gid is None else (peer.gid,),
            "cert_cn": () if not peer.tls_subject else (peer.tls_subject,),
            "cert_san": [san.partition(":")[2] for san in peer.tls_sans],
            "transport": (peer.transport,),
        }
        return all(any(v in wanted for v in facts[k]) for k, wanted in self.match.items())


class PolicyAdapter:
    def __init__(
        self,
        clients: list[dict[str, Any]] | None = None,
        ownership: bool = False,
        **rules: Any,
    ) -> None:
        if clients is not None and rules:
            raise ValueError("give either clients or one rule set's options, not both")
        entries = clients if clients is not None else [{"match": {}, "rules": rules}]
        self.clients = [_client(entry, i) for i, entry in enumerate(entries)]
        if ownership and all(c.rules.unrestricted for c in self.clients):
            # an empty rule set sees everything: ownership would hide nothing from anyone
            raise ValueError("ownership needs a rule set that is not empty (or clients)")
        for client in self.clients:
            if client.rules.unknown_fields is None:  # cautious where clients are told apart
                client.rules.unknown_fields = "refuse" if ownership else "allow"
        self.ownership = Ownership() if ownership else None
        self.daemon: Daemon | None = None
        self._rules_by_peer: dict[Peer, Rules] = {}  # a connection's calls share a peer

    def bind_daemon(self, daemon: Daemon) -> None:
        """Called once by the registry: the daemon behind plugstrip, for lookups."""
        self.daemon = daemon

    def rules_for(self, peer: Peer) -> Rules:
        rules = self._rules_by_peer.get(peer)
        if rules is None:
            client = next((c for c in self.clients if c.matches(peer)), None)
            if client is None:
                refuse(f"no rule set matches client {peer.describe()}")
            assert client is not None
            if len(self._rules_by_peer) >= _PEERS_REMEMBERED:
                self._rules_by_peer.clear()
            rules = self._rules_by_peer[peer] = client.rules
        return rules

    def pre_hook(self, call: Call) -> Awaitable[None] | None:
        """Route rules at once; a coroutine only when a body or ownership needs more (the
        daemon asked), so most calls cost no task switch and no timer."""
        req = call.request
        rules = self.rules_for(call.peer)
        call.context["policy.rules"] = rules
        if rules.unrestricted:  # everything, every object seen
            return None
        rules.check_route(req.method, req.path, req.query)
        if req.streamed and _body_checked(req.method, req.path):
            raise Refuse(400, "plugstrip policy: this request's body must be JSON it can read")
        owned = self.ownership is not None and not rules.see_all
        if (
            not req.body
            and not owned
            and not rules.acts_inside(req.method, req.path)
            and not BUILD.matches(req.method, req.path)
        ):
            return None
        return self._pre_async(call, rules, owned)

    async def _pre_async(self, call: Call, rules: Rules, owned: bool) -> None:
        req = call.request
        body = req.json() if req.body else None
        hits = rules.hits(req.method, req.path, req.query, body)
        if owned:  # first: what the client may not see, it must not learn about either
            assert self.ownership is not None
            await self.ownership.pre_hook(call, self._need_daemon(), hits)
        await rules.check_asked(req.method, req.path, hits, body, self.daemon)

    @property
    def post_calls(self) -> list[tuple[str, str]]:
        """Calls whose answers this policy changes: where it is a pre-hook it must be a
        post-hook too, or it would show what it means to hide (checked at load)."""
        calls = []
        if self.ownership is not None:
            calls += [("GET", "/networks/x"), ("GET", "/networks"), ("GET", "/system/df")]
            calls += [("GET", "/images/json"), ("GET", "/tasks")]
        if any(not c.rules.env and not c.rules.unrestricted for c in self.clients):
            calls.append(("GET", "/containers/x/json"))
        return calls

    def post_hook(self, call: Call) -> Awaitable[None] | None:
        rules: Rules | None = call.context.get("policy.rules")
        response = call.response
        if rules is None or rules.unrestricted or response is None or response.status >= 400:
            return None
        req = call.request
        if not rules.env and INSPECT.matches(req.method, req.path) and response.body:
            config = (response.json() or {}).get("Config") or {}
            config["Env"] = [e.split("=", 1)[0] + "=" + REDACTED for e in config.get("Env") or []]
        if self.ownership is None or rules.see_all:
            return None
        kind = self.ownership.answer_to_cut(req.method, req.path)
        return None if kind is None else self.ownership.post_hook(call, self._need_daemon(), kind)

    def _need_daemon(self) -> Daemon:
        if self.daemon is None:
            refuse("ownership needs the daemon, and the policy was not given one")
        assert self.daemon is not None
        return self.daemon


def _body_checked(method: str, path: str) -> bool:
    return body_type(method, path) is not None


def _client(entry: Any, index: int) -> ClientRules:
    where = f"clients[{index}]"
    if not isinstance(entry, dict) or set(entry) - {"match", "rules"}:
        raise ValueError(f"{where}: expected {{match: ..., rules: ...}}")
    match = entry.get("match") or {}
    unknown = sorted(set(match) - _MATCH_KEYS)
    if unknown:
        raise ValueError(f"{where}.match: unknown key(s) {', '.join(unknown)}")
    wanted = {k: v if isinstance(v, list) else [v] for k, v in match.items()}
    return ClientRules(wanted, Rules.from_options(entry.get("rules") or {}, f"{where}.rules"))
