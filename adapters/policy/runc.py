"""Values read as the components that act on them read them: a user string as runc's
``libcontainer/user`` resolves it (dockerd resolves an exec's user with it), a sysctl as
runc's validator places it in a namespace.
"""

from __future__ import annotations

import re

_GO_INT = re.compile(r"[+-]?[0-9]+")
_INT64 = 2**63
_MAX_ID = 2**31 - 1  # runc's maxId


def go_atoi(text: str) -> int | None:
    """Go's ``strconv.Atoi`` (base 10, a sign allowed, 64-bit), None where it fails."""
    if not _GO_INT.fullmatch(text):
        return None
    value = int(text)
    return value if -_INT64 <= value < _INT64 else None


def _passwd_uid(text: str) -> int:
    """A passwd line's uid as runc reads it: conversion errors ignored (0), and a number
    out of range clamped, as Go's Atoi returns it."""
    if not _GO_INT.fullmatch(text):
        return 0
    return max(-_INT64, min(int(text), _INT64 - 1))


def exec_uid(spec: str, passwd: str | None) -> int | None:
    """The uid runc's ``GetExecUser`` gives ``spec`` ("user", "user:group", ":group"), with
    the container's /etc/passwd (None: it has none). None: runc refuses the spec.

    A numeric user is always a uid, whatever passwd says ("+0", "-0" and "000" are 0); a
    name is the first passwd line with that name; an empty user is the default, uid 0."""
    user = spec.split(":")[0]
    if user == "":
        return 0
    number = go_atoi(user)
    if number is not None:
        return number if 0 <= number <= _MAX_ID else None
    for line in (passwd or "").splitlines():
        parts = line.strip().split(":")
        if parts[0] == user and line.strip():
            return _passwd_uid(parts[2]) if len(parts) > 2 else 0
    return None


# runc's validator: the sysctls a container's own namespaces hold; any other is the host's
_IPC = frozenset(
    "kernel.msgmax kernel.msgmnb kernel.msgmni kernel.sem kernel.shmall kernel.shmmax"
    " kernel.shmmni kernel.shm_rmid_forced".split()
)
_UTS = frozenset({"kernel.domainname", "kernel.hostname"})


def sysctl_namespace(key: str) -> str | None:
    """The namespace a sysctl belongs to (ipc, uts, net), None for the host's own."""
    key = key.replace("/", ".")  # runc accepts both spellings
    if key in _IPC or key.startswith("fs.mqueue."):
        return "ipc"
    if key in _UTS:
        return "uts"
    if key.startswith("net."):
        return "net"
    return None
