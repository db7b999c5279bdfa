"""A ring buffer of the last intercepted calls and what each adapter changed in them."""

from __future__ import annotations

import difflib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import simplejson

from plugstrip.proxy.contract import HttpRequest, HttpResponse, loads

_MAX_DIFF_LINES = 60


@dataclass
class Step:
    adapter: str
    hook: str
    seconds: float
    outcome: str  # "ok", "refused 403: ...", "failed (skipped): ...", ...
    changes: list[str] = field(default_factory=list)


@dataclass
class Record:
    time: float
    method: str
    target: str
    endpoint: str
    peer: str
    steps: list[Step] = field(default_factory=list)
    status: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "method": self.method,
            "target": self.target,
            "endpoint": self.endpoint,
            "peer": self.peer,
            "status": self.status,
            "steps": [vars(s) for s in self.steps],
        }


class Trace:
    def __init__(self, size: int = 200) -> None:
        self._records: deque[Record] = deque(maxlen=size)

    def start(self, method: str, target: str, endpoint: str, peer: str) -> Record:
        record = Record(time.time(), method, target, endpoint, peer)
        self._records.append(record)
        return record

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        records = list(self._records)[-limit:] if limit else list(self._records)
        return [r.as_dict() for r in records]


def changes(before: HttpRequest | HttpResponse, after: HttpRequest | HttpResponse) -> list[str]:
    """Human-readable differences between two snapshots of the same message."""
    out: list[str] = []
    if isinstance(before, HttpRequest) and isinstance(after, HttpRequest):
        if before.method != after.method:
            out.append(f"method: {before.method} -> {after.method}")
        if before.target != after.target:
            out.append(f"request: {before.target} -> {after.target}")
    elif isinstance(before, HttpResponse) and isinstance(after, HttpResponse):
        if before.status != after.status:
            out.append(f"status: {before.status} -> {after.status}")
    if before.headers != after.headers:  # nearly always equal: one list comparison
        old, new = list(before.headers), list(after.headers)
        out += [f"header removed: {k}: {v}" for k, v in old if (k, v) not in new]
        out += [f"header set: {k}: {v}" for k, v in new if (k, v) not in old]
    if before.body != after.body:
        out.append("body:\n" + _body_diff(before.body, after.body))
    return out


def _body_diff(old: bytes | None, new: bytes | None) -> str:
    lines = difflib.unified_diff(_pretty(old), _pretty(new), "before", "after", lineterm="", n=1)
    text = list(lines)
    if len(text) > _MAX_DIFF_LINES:
        text = [*text[:_MAX_DIFF_LINES], f"... ({len(text) - _MAX_DIFF_LINES} more lines)"]
    return "\n".join(text)


def _pretty(body: bytes | None) -> list[str]:
    if body is None:
        return ["(none)"]
    try:
        return simplejson.dumps(loads(body), indent=1, use_decimal=True).splitlines()
    except ValueError:
        return body.decode("utf-8", errors="replace").splitlines()
