"""A recording tap for differential transparency tests.

A ``Tap`` listens on a unix socket and relays every connection to a target socket byte for
byte, half-closes included, recording each direction's bytes and which side ended first.
Afterwards ``transcript()`` reads each connection as HTTP/1.1, on its own (it shares no code
with plugstrip's parser, so the two do not share a mistake): per exchange the request head,
the response heads (interim ones included), the framing, a digest of each body, and after a
protocol switch a digest of each direction's raw bytes; then who closed, after which
exchange.

Run a workload through a tap in front of the daemon and again through a tap in front of
plugstrip, and compare: ``diff()`` names the first exchange that differs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Normalise = Callable[[bytes], bytes]

# Headers whose value is the time of the answer, not part of what the daemon decided.
_VOLATILE = {b"date"}


@dataclass
class Recorded:
    """One relayed connection: both directions' bytes, and who ended first."""

    to_server: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    ends: list[str] = field(default_factory=list)  # "client", "server": who sent EOF, in order
    done: bool = False


class Tap:
    def __init__(self, listen: Path, target: str) -> None:
        self.listen = listen
        self.target = target
        self.connections: list[Recorded] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    @property
    def host(self) -> str:
        return f"unix://{self.listen}"

    def __enter__(self) -> Tap:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._stop)
        self._thread.join(10)

    def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._loop.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_unix_server(self._relay, str(self.listen), backlog=4096)
        )
        self._ready.set()
        self._loop.run_forever()

    def reset(self) -> None:
        self.connections = []

    def settle(self, timeout: float = 10) -> None:
        """Wait until every connection relayed so far has ended on both sides."""
        deadline = time.monotonic() + timeout
        while not all(c.done for c in self.connections) and time.monotonic() < deadline:
            time.sleep(0.05)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        # asyncio (before 3.12) keeps no reference to a connection's task: without this
        # one, a collection of garbage can end a relay mid-way and close both sockets.
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)
        rec = Recorded()
        self.connections.append(rec)
        try:
            server_r, server_w = await asyncio.open_unix_connection(self.target)
        except OSError:
            rec.ends.append("server")
            rec.done = True
            client_w.close()
            return

        async def pump(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, buf: bytearray, side: str
        ) -> None:
            """Only bytes the other end took are recorded: a client that has gone (not
            just half-closed) takes nothing more, and the peer is then closed."""
            try:
                while data := await r.read(1 << 16):
                    w.write(data)
                    await w.drain()
                    if w.is_closing():
                        raise ConnectionResetError
                    buf += data
            except (ConnectionError, OSError):
                for other in (client_w, server_w):
                    other.close()
                return
            rec.ends.append(side)
            try:
                if w.can_write_eof():
                    w.write_eof()
            except (OSError, RuntimeError):
                pass

        await asyncio.gather(
            pump(client_r, server_w, rec.to_server, "client"),
            pump(server_r, client_w, rec.to_client, "server"),
        )
        for w in (client_w, server_w):
            w.close()
        rec.done = True


# ---- reading a recorded connection as HTTP -------------------------------------------


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def head(self) -> bytes | None:
        end = self.data.find(b"\r\n\r\n", self.pos)
        if end < 0:
            return None
        head = self.data[self.pos : end]
        self.pos = end + 4
        return head

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def chunked(self) -> tuple[bytes, bytes, bool]:
        """The de-chunked body, the trailer section, and whether it ended properly."""
        body = bytearray()
        while True:
            eol = self.data.find(b"\r\n", self.pos)
            if eol < 0:
                self.rest()
                return bytes(body), b"", False
            size = int(self.data[self.pos : eol].split(b";")[0].strip() or b"0", 16)
            self.pos = eol + 2
            if size == 0:
                end = self.data.find(b"\r\n\r\n", self.pos - 2)
                if end < 0:
                    self.rest()
                    return bytes(body), b"", False
                trailers = self.data[self.pos : end]
                self.pos = end + 4
                return bytes(body), trailers, True
            body += self.take(size)
            self.pos += 2


def _headers(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    first, *lines = head.split(b"\r\n")
    return first, [
        (k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in lines)
    ]


def _get(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((v for k, v in headers if k == name), None)


def _digest(body: bytes, normalise: Normalise) -> str:
    """Length and hash; with $DIFFTAP_DUMP set, the body is kept there under that name."""
    body = normalise(body)
    name = f"{len(body)}:{hashlib.sha256(body).hexdigest()[:16]}"
    if dump := os.environ.get("DIFFTAP_DUMP"):
        Path(dump).mkdir(parents=True, exist_ok=True)
        (Path(dump) / name.replace(":", "-")).write_bytes(body)
    return name


def _shown_headers(headers: list[tuple[bytes, bytes]], normalise: Normalise) -> list[str]:
    out = []
    for k, v in headers:
        if k in _VOLATILE:
            continue
        if k == b"content-length":
            v = b"<n>"  # the body's digest (after normalising) says whether it is the same
        elif k == b"x-docker-container-path-stat":  # base64 JSON, with a modification time
            v = base64.b64decode(v)
        out.append(f"{k.decode()}: {normalise(v).decode(errors='replace')}")
    return out


def transcript(rec: Recorded, normalise: Normalise = lambda b: b) -> list[str]:
    """One connection as lines: each request, its answers, and how it ended."""
    req, resp = _Reader(bytes(rec.to_server)), _Reader(bytes(rec.to_client))
    lines: list[str] = []
    exchanges = 0
    while not req.at_end():
        head = req.head()
        if head is None:
            lines.append(f"request cut short: {len(req.rest())} bytes")
            break
        first, headers = _headers(head)
        method = first.split(b" ")[0]
        lines.append("> " + normalise(first).decode(errors="replace"))
        lines += ["> " + h for h in _shown_headers(headers, normalise)]
        if (_get(headers, b"transfer-encoding") or b"").lower() == b"chunked":
            body, _, ok = req.chunked()
            lines.append(f"> body chunked {_digest(body, normalise)}{'' if ok else ' cut'}")
        elif (length := _get(headers, b"content-length")) is not None:
            lines.append(f"> body {_digest(req.take(int(length)), normalise)}")
        exchanges += 1
        switched = False
        while True:  # the answers to this request: interim ones, then the final one
            rhead = resp.head()
            if rhead is None:
                lines.append(f"< no answer ({len(resp.rest())} bytes)")
                break
            rfirst, rheaders = _headers(rhead)
            status = int(rfirst.split(b" ")[1])
            lines.append("< " + normalise(rfirst).decode(errors="replace"))
            lines += ["< " + h for h in _shown_headers(rheaders, normalise)]
            if 100 <= status < 200 and status != 101:
                continue
            ctype = _get(rheaders, b"content-type") or b""
            raw_stream = status == 200 and b"vnd.docker.raw-stream" in ctype
            raw_stream = raw_stream or (status == 200 and b"multiplexed-stream" in ctype)
            te = (_get(rheaders, b"transfer-encoding") or b"").lower()
            length = _get(rheaders, b"content-length")
            if status == 101 or (raw_stream and te != b"chunked" and length is None):
                switched = True
            elif method == b"HEAD" or status in (204, 304):
                lines.append("< no body")
            elif te == b"chunked":
                body, trailers, ok = resp.chunked()
                end = "" if ok else " cut"
                lines.append(f"< body chunked {_digest(body, normalise)}{end}")
                if trailers:
                    lines.append(f"< trailers {normalise(trailers).decode(errors='replace')}")
            elif length is not None:
                lines.append(f"< body {_digest(resp.take(int(length)), normalise)}")
            else:
                lines.append(f"< body to eof {_digest(resp.rest(), normalise)}")
            break
        if switched:
            lines.append(f"> raw {_digest(req.rest(), normalise)}")
            lines.append(f"< raw {_digest(resp.rest(), normalise)}")
            break
    if not resp.at_end():
        lines.append(f"< unasked bytes {len(resp.rest())}")
    first = f"the {rec.ends[0]} ended first" if rec.ends else "neither side ended"
    lines.append(f"= {exchanges} exchanges, then {first}")
    return lines


def transcripts(tap: Tap, normalise: Normalise = lambda b: b) -> list[list[str]]:
    """Every connection's transcript, sorted: which connection a client opens first can
    depend on its goroutines' timing, what each connection carries does not."""
    return sorted(transcript(c, normalise) for c in tap.connections)


def diff(direct: list[list[str]], proxied: list[list[str]]) -> str:
    """'' when equal; else the first differing exchange of the first differing connection."""
    if direct == proxied:
        return ""
    if len(direct) != len(proxied):
        return f"{len(direct)} connections directly, {len(proxied)} through plugstrip:\n" + (
            "\n".join(
                f"  direct: {d[0] if d else ''!s:.80}  |  proxied: {p[0] if p else ''!s:.80}"
                for d, p in zip(direct, proxied, strict=False)
            )
        )
    for d, p in zip(direct, proxied, strict=True):
        if d == p:
            continue
        at = next(i for i, (a, b) in enumerate(zip([*d, ""], [*p, ""], strict=False)) if a != b)
        shown = "\n".join(
            f"  {'!' if i == at else ' '} {a:<70.70} | {b:.70}"
            for i, (a, b) in enumerate(itertools.zip_longest(d, p, fillvalue=""))
        )
        return f"connection differs at line {at} (direct | through plugstrip):\n{shown}"
    return "differ"


# ---- what differs between two runs of one workload without being plugstrip's doing --


_HEX64 = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
_HEX12 = re.compile(rb"(?<![0-9a-f])[0-9a-f]{12}(?![0-9a-f])")
# A sandbox's namespace file is named from its id's first 12 digits; a stopped container
# may show the file while its SandboxID is already gone, so the id is not learnt.
_NETNS = re.compile(rb"(/netns/)[0-9a-f]{12}(?![0-9a-f])")
_TIME = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
# Unix times (of events, of creation, --since/--until), ages ("Up 2 seconds"), pids, and
# the daemon's counts of its own descriptors and goroutines.
_CLOCK = re.compile(
    rb'("(?:time|timeNano|Created|Pid|NFd|NGoroutines)":)\d+'
    rb"|((?:since|until)=)[\d.]+"
    rb'|"(?:Up|Exited \(\d+\)) [^"]*"'
)


def _clock(m: re.Match[bytes]) -> bytes:
    return (m.group(1) or m.group(2) or b"") + b"<t>"


class IdNormaliser:
    """Ids (full, and short forms of them) become <id> and times become <T>: the two runs
    made different containers at different times. Ids are learnt from every byte of the
    runs first, so how a connection reads does not depend on the order they are read in."""

    def __init__(self, *taps: Tap) -> None:
        self.ids: set[bytes] = set()
        for tap in taps:
            for c in tap.connections:
                for data in (c.to_server, c.to_client):
                    self.ids.update(_HEX64.findall(data))
        self.short = {i[:12] for i in self.ids}

    def __call__(self, data: bytes) -> bytes:
        data = _HEX64.sub(b"<id>", data)
        data = _HEX12.sub(lambda m: b"<id>" if m.group(0) in self.short else m.group(0), data)
        data = _NETNS.sub(rb"\1<id>", data)
        return _CLOCK.sub(_clock, _TIME.sub(b"<T>", data))
