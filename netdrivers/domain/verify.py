"""What a driver's check of its own datapath reports (CNI's CHECK): findings, and the two
every driver makes in the same words, its ports' bindings and its security groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from plugstrip.netdrivers.domain.security import Policy

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    detail: str


def bindings(
    driver: str, count: int, differing: list[str], detached: list[str], detached_hint: str
) -> Finding:
    """The ports' bindings: ``detached`` ports not on the datapath (``detached_hint``:
    what that means on this driver), ``differing`` ones bound otherwise than the store
    says."""
    check = f"port bindings ({driver})"
    if detached:
        return Finding(check, "fail", f"{detached_hint}: {', '.join(detached)}")
    if differing:
        return Finding(
            check,
            "fail",
            f"ports whose binding is missing or differs from the store's: {', '.join(differing)}"
            " (restart plugstrip serve: it binds every port at start)",
        )
    return Finding(check, "ok", f"{count} port(s) bound to their endpoints")


def groups(driver: str, wanted: Policy, found: set[tuple[str, str]], listing: str) -> Finding:
    """The security groups: the (direction, address) pairs the datapath guards
    (``found``) against ``wanted``'s, and each member address in ``listing``."""
    guarded = {("in", str(g.address)) for g in wanted.guarded} | {
        ("out", str(g.address)) for g in wanted.egress_guarded()
    }
    members = {str(m) for ms in wanted.members.values() for m in ms}
    missing = [f"{w} {a}" for w, a in sorted(guarded - found)]
    missing += sorted(m for m in members if m not in listing)
    extra = [f"{w} {a}" for w, a in sorted(found - guarded)]
    check = f"security groups ({driver})"
    if missing or extra:
        return Finding(check, "fail", f"missing {missing or 'nothing'}, extra {extra or 'nothing'}")
    return Finding(
        check,
        "ok",
        f"{len(wanted.guarded)} guarded endpoint(s) ({len(wanted.egress_guarded())} with"
        f" egress rules), {len(members)} member address(es)",
    )
