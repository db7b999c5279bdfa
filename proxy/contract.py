"""The hook contract: what an adapter sees and may change.

An adapter is a plain object with an async (or plain) ``pre_hook(call)`` and/or
``post_hook(call)`` method. A pre-hook may change ``call.request`` (method, path, query,
headers, body); a post-hook may change ``call.response`` (status, headers, body) and sees
both ``call.client_request`` (as the client sent it) and ``call.request`` (as it went
upstream). ``call.context`` carries state from an adapter's pre-hook to its post-hook.
Raising :class:`Refuse` ends the call with a Docker-format error; ``call.respond(...)`` in
a pre-hook answers it without asking the daemon (an adapter that owns a resource).
``finished(call)`` runs after every intercepted call however it ended (``call.status`` is
what the client got); it observes only, and its errors are logged, never sent to the
client.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import simplejson

from plugstrip.proxy.canonical import BadRequest, Schema, read_json

HOOK_NAMES = ("pre_hook", "post_hook", "finished")
# Objects a client owns carry this label; while a policy gives a call an owner,
# ``call.context[OWNER_KEY]`` names it, so an adapter that answers for objects itself (the
# network adapter's networks) shows that client only its own.
OWNER_LABEL = "io.plugstrip.owner"
OWNER_KEY = "plugstrip.owner"


class Refuse(Exception):
    """Raised by a hook to end the call; the client gets ``{"message": ...}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdapterError(Exception):
    """An adapter broke (as opposed to refusing on purpose); ``status`` reaches the client
    when the failure policy is to refuse."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class Headers:
    """Ordered HTTP headers: lookups ignore case, names and order are kept as received."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        lname = name.lower()
        for key, value in self._items:
            if key.lower() == lname:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [value for key, value in self._items if key.lower() == lname]

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` header by one, in the place of the first (else at the end)."""
        lname = name.lower()
        out: list[tuple[str, str]] = []
        placed = False
        for key, old in self._items:
            if key.lower() != lname:
                out.append((key, old))
            elif not placed:
                out.append((key, value))
                placed = True
        if not placed:
            out.append((name, value))
        self._items = out

    def remove(self, name: str) -> None:
        lname = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != lname]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def copy(self) -> Headers:
        return Headers(self._items)


def loads(text: bytes | str) -> Any:
    """Parse JSON keeping key order and exact numbers (floats as Decimal)."""
    return simplejson.loads(text, use_decimal=True)


def dumps(value: Any) -> bytes:
    return simplejson.dumps(value, use_decimal=True, separators=(",", ":")).encode()


class _JsonBody:
    """A body that may be read and edited as JSON; edits in place are noticed at the end."""

    body: bytes | None
    _parsed: Any
    _pristine: Any

    def _init_json(self) -> None:
        self._parsed = _UNPARSED
        self._pristine = _UNPARSED
        self._source: bytes | None = None

    def _parse(self, body: bytes) -> Any:
        return loads(body)

    def json(self) -> Any:
        """The body parsed (cached): mutate it in place, or call ``set_json``."""
        if self._parsed is _UNPARSED:
            if not self.body:
                return None
            self._parsed = self._parse(self.body)
            self._pristine = copy.deepcopy(self._parsed)
            self._source = self.body  # the bytes that parse came from
        return self._parsed

    def set_json(self, value: Any) -> None:
        self.body = dumps(value)
        self._parsed = _UNPARSED

    def set_body(self, body: bytes | None) -> None:
        self.body = body
        self._parsed = _UNPARSED

    def settle(self) -> None:
        """Fold in-place edits of ``json()`` into ``body``; an unedited body keeps its bytes,
        and its parse stays for the next reader (the core reads Docker's bodies once, then
        every hook would parse them again)."""
        if self._parsed is _UNPARSED:
            return
        if self.body is not self._source:  # ``body`` replaced directly: parse it afresh
            self._parsed = _UNPARSED
        elif self._parsed != self._pristine:
            self.body = dumps(self._parsed)
            self._parsed = _UNPARSED


_UNPARSED: Any = object()


@dataclass(eq=False)
class HttpRequest(_JsonBody):
    """A request, read as the daemon reads it (``plugstrip.proxy.canonical``): ``path`` is
    percent-decoded, and ``json()`` gives the keys of the bodies Docker defines in Docker's
    spelling (``body["HostConfig"]["Privileged"]`` whatever case the client wrote); a body
    that cannot be read so makes ``json()`` refuse the call with a 400. ``body`` is None
    when it is streamed (not JSON, or too large to hold): then ``streamed`` says whether
    there was one at all, which a hook that checks bodies must refuse."""

    method: str
    path: str
    query: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes | None = None
    schema: Schema = None  # the body's type, where Docker defines it
    streamed: bool = False
    # The path as the client wrote it, escapes and all: sent on unless a hook changes path.
    raw_path: str | None = None

    def __post_init__(self) -> None:
        self._init_json()
        if self.raw_path is None:
            self.raw_path = self.path
        self._decoded = self.path

    def _parse(self, body: bytes) -> Any:
        try:
            return read_json(body, self.schema)
        except BadRequest as exc:
            raise Refuse(400, str(exc)) from None

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    @target.setter
    def target(self, value: str) -> None:
        self.path, _, self.query = value.partition("?")

    @property
    def wire_target(self) -> str:
        """The target to send upstream: the client's own bytes while the path is unchanged."""
        path = self.raw_path if self.path == self._decoded else quote(self.path, safe=_PATH_SAFE)
        return f"{path}?{self.query}" if self.query else str(path)

    def snapshot(self) -> HttpRequest:
        self.settle()
        copied = HttpRequest(
            self.method,
            self.path,
            self.query,
            self.headers.copy(),
            self.body,
            self.schema,
            self.streamed,
            self.raw_path,
        )
        copied._decoded = self._decoded
        return copied


_PATH_SAFE = "/:@!$&'()*+,;=~"


@dataclass(eq=False)
class HttpResponse(_JsonBody):
    """A response. ``streaming`` responses (event streams, logs, hijacks) have ``body`` None:
    hooks may change status and headers or refuse, and the stream then passes untouched."""

    status: int
    headers: Headers = field(default_factory=Headers)
    body: bytes | None = None
    streaming: bool = False

    def __post_init__(self) -> None:
        self._init_json()

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type") or ""

    def snapshot(self) -> HttpResponse:
        self.settle()
        return HttpResponse(self.status, self.headers.copy(), self.body, self.streaming)


@dataclass(frozen=True)
class Peer:
    """Who is calling: unix peer credentials (``SO_PEERCRED``), or a TCP address and the
    verified TLS client certificate's subject CN and SANs. An address is never an identity."""

    transport: str  # "unix" or "tcp"
    address: str = ""
    uid: int | None = None
    pid: int | None = None
    tls_subject: str | None = None  # the certificate's common name
    gid: int | None = None
    tls_sans: tuple[str, ...] = ()  # "DNS:name", "IP Address:...", "email:..." as in the cert

    @property
    def identity(self) -> str:
        """A stable name for the client: ``uid:1001``, ``cn:ci-runner``, or ``anonymous``."""
        if self.uid is not None:
            return f"uid:{self.uid}"
        if self.tls_subject:
            return f"cn:{self.tls_subject}"
        return "anonymous"

    def describe(self) -> str:
        if self.transport == "unix":
            return f"unix:uid={self.uid},gid={self.gid},pid={self.pid}"
        who = f"tcp:{self.address}"
        return f"{who},cn={self.tls_subject}" if self.tls_subject else who


@dataclass(eq=False)
class Call:
    """One intercepted API call as it moves through the hooks."""

    client_request: HttpRequest
    request: HttpRequest
    peer: Peer
    endpoint: str
    response: HttpResponse | None = None
    context: dict[str, Any] = field(default_factory=dict)
    status: int | None = None  # the status the client got, set before ``finished``

    def respond(
        self,
        status: int,
        json: Any = None,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Answer the call from a pre-hook: the daemon is not asked, the rest of the
        pre-hook chain is skipped, post-hooks and ``finished`` still run on the answer."""
        payload = dumps(json) if json is not None else (body or b"")
        self.response = HttpResponse(status, Headers([("Content-Type", content_type)]), payload)


def split_version(path: str) -> tuple[str | None, str]:
    """``/v1.41/containers/json`` -> ``("1.41", "/containers/json")``; no prefix -> None."""
    match = _VERSION_PREFIX.match(path)
    if match is None:
        return None, path
    return match.group(1), path[match.end() :] or "/"


# dockerd's router takes any run of digits and dots as the version (``/v1.41.0/`` is
# 1.41): so does plugstrip, or such a path would match no route here and still be
# routed there.
_VERSION_PREFIX = re.compile(r"/v([0-9.]+)(?=/|$)")


def same_version(a: str, b: str) -> bool:
    """Versions compared as the daemon compares them: by number, part by part, missing or
    unreadable parts as 0 (``1.41`` is ``1.41.0``)."""
    pa, pb = a.split("."), b.split(".")
    width = max(len(pa), len(pb))
    return [_part(p) for p in pa + ["0"] * (width - len(pa))] == [
        _part(p) for p in pb + ["0"] * (width - len(pb))
    ]


def _part(text: str) -> int:
    return int(text) if text.isdigit() else 0


def hooks_of(adapter: object) -> tuple[str, ...]:
    return tuple(name for name in HOOK_NAMES if callable(getattr(adapter, name, None)))
