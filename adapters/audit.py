"""One JSON line per mutating call: who, what, and the outcome.

::

    adapters:
      audit: {use: audit, options: {path: /var/log/plugstrip/audit.jsonl}}
    endpoints:
      "* /**": {post: [audit]}

Reads (GET, HEAD) are not logged. Refused calls are, with the status the client got.
Without ``path`` lines go to standard output.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from plugstrip.proxy.contract import Call, Refuse

_READ_METHODS = ("GET", "HEAD")
# Fields of a create body worth a line in an audit log (never the environment: secrets).
_CREATE_FIELDS = ("Image", "Cmd", "Entrypoint", "User")
_HOST_FIELDS = ("Privileged", "NetworkMode", "PidMode", "Binds", "CapAdd")


class AuditAdapter:
    def __init__(self, path: str | None = None) -> None:
        self._path = Path(path) if path else None
        self._file: TextIO | None = None

    def pre_hook(self, call: Call) -> None:
        call.context["audit.start"] = time.perf_counter()

    def finished(self, call: Call) -> None:
        req = call.client_request
        if req.method in _READ_METHODS:
            return
        started = call.context.get("audit.start")
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "who": call.peer.describe(),
            "method": req.method,
            "request": req.target,
            "status": call.status,
            "outcome": _outcome(call.status),
        }
        if started is not None:
            line["ms"] = round((time.perf_counter() - started) * 1000, 2)
        line.update(_details(call))
        self._write(json.dumps(line, default=str))

    def _write(self, text: str) -> None:
        if self._path is None:
            print(text, file=sys.stdout, flush=True)
            return
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("a", buffering=1)
        self._file.write(text + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _outcome(status: int | None) -> str:
    if status is None:
        return "aborted"
    return "ok" if status < 400 else "refused" if status in (401, 403) else "error"


def _details(call: Call) -> dict[str, Any]:
    """What a create asked for: image, command and the host settings that matter."""
    req = call.client_request
    if not req.path.endswith("/containers/create") or not req.body:
        return {}
    try:
        body = req.json()
    except (ValueError, Refuse):
        return {}
    if not isinstance(body, dict):
        return {}
    host = body.get("HostConfig") or {}
    out = {k: body[k] for k in _CREATE_FIELDS if body.get(k)}
    out.update({k: host[k] for k in _HOST_FIELDS if host.get(k)})
    return {"create": out} if out else {}
