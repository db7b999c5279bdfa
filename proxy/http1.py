"""HTTP/1.1 on one side of the proxy, parsed by llhttp (through httptools).

llhttp is Node's parser: strict framing (bad chunking, Content-Length together with
Transfer-Encoding, duplicate lengths and bad header names are errors) at C speed, and it
says where an upgraded connection's raw bytes begin, so nothing a hijacked peer already
sent is lost. Parsing is only for framing: an unmodified response is passed on as the
bytes that came, and a request head is written in the client's own order and spelling.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, Protocol

import httptools

from plugstrip.proxy.chunked import BodyEnd, ChunkedEnd, LengthEnd

READ_SIZE = 1 << 16
# Relays and pipes move bulk data: fewer, larger reads cost less CPU per byte.
RELAY_READ_SIZE = 1 << 18
# Go's net/http (dockerd) accepts 1 MiB of headers; registry auth headers can be large.
MAX_HEAD = 1 << 20


class ByteReader(Protocol):
    """What the proxy reads from: an asyncio StreamReader, or the TLS layer's reader."""

    async def read(self, n: int = -1) -> bytes: ...

    def at_eof(self) -> bool: ...


class ByteWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def can_write_eof(self) -> bool: ...

    def write_eof(self) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


class ProtocolError(Exception):
    """The peer broke HTTP/1.1; ``status`` is the answer it deserves."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Head:
    # The fields as llhttp gave them (requests); None until asked, then read from ``raw``
    # (responses: most are passed on as they came, and their fields are never read).
    parsed: list[tuple[bytes, bytes]] | None
    version: str
    keep_alive: bool
    upgrade: bool
    method: str = ""  # requests
    target: str = ""
    status: int = 0  # responses
    reason: str = ""
    chunked: bool = False
    length: int | None = None  # Content-Length, if any
    asks_upgrade: bool = False  # it has an Upgrade header (``upgrade``: llhttp switched)
    raw: bytes = b""  # responses: the head as received

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.parsed is None:
            self.parsed = _fields(self.raw)
        return self.parsed


def _fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    """A head's fields, read from its bytes. llhttp has checked them: each on a line of
    its own (no folding, no bare LF) as a name, a colon and the value, white space around
    it optional."""
    lines = raw.split(b"\r\n")[1:-2]  # the start line; the blank line's two empty ends
    return [(k, v.strip(b" \t")) for k, _, v in (line.partition(b":") for line in lines)]


def _note_framing(head: Head) -> None:
    """Content-Length and Transfer-Encoding from a response head's bytes: the two a
    relay must know, found without reading every field. Each name is at a line's start,
    where no value can hold it; of several Transfer-Encoding fields the last counts."""
    raw = head.raw
    lowered = raw.lower()
    at = lowered.find(b"\r\ncontent-length:")
    if at >= 0:
        head.length = int(raw[at + 17 : raw.index(b"\r\n", at + 2)])
    at = lowered.rfind(b"\r\ntransfer-encoding:")
    if at >= 0:
        value = lowered[at + 20 : lowered.index(b"\r\n", at + 2)]
        head.chunked = value.strip(b" \t") == b"chunked"


def persistent(version: str, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a message leaves its connection open (RFC 9112 §9.3), from its head alone."""
    tokens = {
        t.strip().lower() for k, v in headers if k.lower() == b"connection" for t in v.split(b",")
    }
    if b"close" in tokens:
        return False
    return version == "1.1" or b"keep-alive" in tokens


# The headers a head notes as it is parsed: those that frame a body, and Upgrade.
_NOTED_LENGTHS = (len(b"content-length"), len(b"transfer-encoding"), len(b"upgrade"))


class _End:
    def __repr__(self) -> str:
        return "END"


END = _End()
Event = Head | bytes | _End


@dataclass
class _Collector:
    """httptools callbacks, queued as events (the queue outlives a parser renewed
    between two messages of one read). A response's fields are not called back one by
    one: its head is kept as bytes (``Head.raw``)."""

    events: deque[Event] = field(default_factory=deque)
    url: bytes = b""
    status: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    noted: list[tuple[bytes, bytes]] = field(default_factory=list)  # _NOTED, names lower-case
    in_head: bool = True
    complete: bool = False
    skip_body: bool = False  # relaying raw: body bytes are already on their way
    messages: int = 0
    parser: Any = None
    requests: bool = False  # the parser reads requests

    def on_message_begin(self) -> None:
        self.url, self.status, self.headers, self.noted = b"", b"", [], []
        self.in_head, self.complete = True, False
        self.messages += 1

    def on_status(self, status: bytes) -> None:
        self.status += status

    def on_headers_complete(self) -> None:
        self.in_head = False
        p = self.parser
        head = Head(None, p.get_http_version(), p.should_keep_alive(), p.should_upgrade())
        if self.requests:
            head.parsed = self.headers
            head.method = p.get_method().decode("ascii")
            head.target = self.url.decode("latin-1")
        else:
            head.status = p.get_status_code()
            head.reason = self.status.decode("latin-1")
        for k, v in self.noted:
            if k == b"transfer-encoding":
                head.chunked = v.strip().lower() == b"chunked"
            elif k == b"content-length":
                head.length = int(v)
            elif k == b"upgrade":
                head.asks_upgrade = True
        self.events.append(head)

    def on_body(self, body: bytes) -> None:
        if not self.skip_body:
            self.events.append(bytes(body))

    def on_message_complete(self) -> None:
        self.complete = True
        self.events.append(END)


@dataclass
class _RequestCollector(_Collector):
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if len(name) in _NOTED_LENGTHS:  # most headers are none of these: no lower() for them
            self.noted.append((name.lower(), value))


class HttpSide:
    """One connection, parsed as requests (the client side) or responses (the upstream).

    Responses are framed as RFC 9112 §6.3 says, which llhttp alone cannot do (httptools
    cannot tell it that a response answers a HEAD): a response to HEAD, and every 1xx, 204
    and 304, ends at its head whatever its headers say, and its connection stays open
    unless the head says otherwise; a response with neither length header ends when the
    upstream closes."""

    def __init__(
        self, kind: Literal["request", "response"], reader: ByteReader, writer: ByteWriter
    ) -> None:
        self.kind = kind
        self.reader = reader
        self.writer = writer
        self.unparsed = bytearray()  # read ahead, not yet fed (a hijack's early bytes)
        self.eof = False
        self.trailing = b""  # bytes after an upgrade
        self._head_buf = bytearray()  # a response head so far; of a request, its last 3 bytes
        self._fresh_head = False  # the next byte fed starts a new head
        self._no_body = False  # the response answers a HEAD
        self._to_eof = False  # the response body is delimited by the upstream closing
        self._c = _Collector()
        self._new_parser()

    def _new_parser(self) -> None:
        events = self._c.events
        self._parser: httptools.HttpRequestParser | httptools.HttpResponseParser
        if self.kind == "request":
            self._c = _RequestCollector(events=events, requests=True)
            self._parser = httptools.HttpRequestParser(self._c)
        else:
            self._c = _Collector(events=events)
            self._parser = httptools.HttpResponseParser(self._c)
        self._c.parser = self._parser
        self.upgraded = False
        self._upgrade_body = 0  # body bytes still due from a request that asked to upgrade
        self._head_bytes = 0

    def expect_response(self, method: str) -> None:
        """Before each response. The parser goes on from one kept-alive response to the
        next unless the last one was cut short."""
        if self._c.messages and not self._c.complete:
            self._new_parser()
        self._c.in_head = True  # what comes now is a head, to keep as ``Head.raw``
        self._head_buf.clear()
        self._fresh_head = False
        self._no_body = method == "HEAD"
        self._to_eof = False

    def after_refused_upgrade(self) -> None:
        """The upstream did not switch protocols: the client goes on speaking HTTP."""
        self.unparsed[:0] = self.trailing
        self.trailing = b""
        self._new_parser()

    async def next(self) -> Event | None:
        """The next event; None when the peer closed between messages."""
        while not self._c.events:
            if self.upgraded and not self._upgrade_body:
                raise ProtocolError("read past a protocol switch", 500)
            if self.unparsed:
                data = bytes(self.unparsed)
                self.unparsed.clear()
            elif self.eof:
                data = b""
            else:
                data = await self.reader.read(READ_SIZE)
                self.eof = not data
            if not data:
                if (self._c.in_head and self._c.messages == 0) or self._c.complete:
                    return None
                if self._to_eof and not self._c.in_head:
                    self._end_message()
                    break
                raise ConnectionError("peer closed in the middle of a message")
            if self._upgrade_body:
                self._take_upgrade_body(data)
            else:
                self._feed(data)
        return self._c.events.popleft()

    def _feed(self, data: bytes) -> None:
        if self.kind == "request" and (self._c.in_head or self._c.complete):
            self._feed_request_head(data)
            return
        if self._c.in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD + READ_SIZE:
                raise ProtocolError("request header fields too large", 431)
            if self.kind == "response" and self._feed_head(data):
                data = b""
        if data:
            self._parse(data)
        if not self._c.in_head:
            self._head_bytes = 0

    def _feed_request_head(self, data: bytes) -> None:
        """Parse a request head and keep what follows it unfed: the body is parsed only if
        it is read as events (``next``), and relayed as framed otherwise (``relay_body``)."""
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD + READ_SIZE:
            raise ProtocolError("request header fields too large", 431)
        while data:
            cut = self._head_cut(data)
            if cut < 0:
                self._head_buf += data[-3:]  # all a blank line across reads needs
                del self._head_buf[:-3]
                self._parse(data)
                return
            self._head_buf.clear()
            self._parse(data[:cut])
            data = data[cut:]
            if not self._c.in_head:  # else empty lines before a request line: go on
                break
        self._head_bytes = 0
        if not data:
            return
        if self.upgraded:  # what follows is the body llhttp skipped, then raw bytes
            if self._upgrade_body:
                self._take_upgrade_body(data)
            else:
                self.trailing += data
        else:
            self.unparsed[:0] = data

    def _feed_head(self, data: bytes) -> bool:
        """Keep a response head's bytes, and end a bodiless response at its head: what
        follows it in this read is the next message. True if ``data`` was parsed here."""
        if self._fresh_head:
            self._head_buf.clear()
            self._fresh_head = False
        start = len(self._head_buf)
        cut = self._head_cut(data)
        self._head_buf += data
        if cut < 0:
            return False
        bodiless = self._bodiless()
        self._parse(data[:cut])
        head = next((e for e in reversed(self._c.events) if isinstance(e, Head)), None)
        if head is not None:
            head.raw = bytes(self._head_buf[: start + cut])
            _note_framing(head)
        if not bodiless:
            if self.upgraded:
                self.trailing += data[cut:]
                return True
            assert head is not None
            # Neither length header: the body ends when the upstream closes.
            self._to_eof = not head.chunked and head.length is None
            if len(data) > cut:
                self._parse(data[cut:])
            return True
        assert head is not None
        head.keep_alive = persistent(head.version, head.headers)
        head.chunked, head.length = False, None
        if not self._c.complete:  # llhttp waits for a body that is not coming
            self._c.events.append(END)
        self._new_parser()
        self._c.complete = True  # until the next message begins
        self._fresh_head = True
        self._head_bytes = 0
        if len(data) > cut:
            self._feed(data[cut:])
        return True

    def _head_cut(self, data: bytes) -> int:
        """Where in ``data`` the head being read ends (just past its blank line), or -1.
        The blank line may begin in the last bytes read (kept in ``_head_buf``); ``data``
        itself is searched in place, not copied."""
        if self._head_buf:
            held = bytes(self._head_buf[-3:])
            seam = (held + data[:3]).find(b"\r\n\r\n")  # only one across the seam is new
            if seam >= 0:
                return seam + 4 - len(held)
        end = data.find(b"\r\n\r\n")
        return end + 4 if end >= 0 else -1

    def _bodiless(self) -> bool:
        """RFC 9112 §6.3: the head now in the buffer ends its message (101 is an upgrade)."""
        line = bytes(self._head_buf[:13])
        if not line.startswith(b"HTTP/") or not line[9:12].isdigit():
            return False  # llhttp says what is wrong
        status = int(line[9:12])
        if 100 <= status < 200:
            return status != 101
        return self._no_body or status in (204, 304)

    def _parse(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as up:
            self.upgraded = True
            rest = data[up.args[0] :]
            head = next((e for e in reversed(self._c.events) if isinstance(e, Head)), None)
            if self.kind == "request" and head is not None and head.length:
                # llhttp skips the body of a request that asks to upgrade (exec start
                # sends JSON with its Upgrade): take it back before the raw bytes.
                self._c.events.pop()  # its END, put back once the body is whole
                self._upgrade_body = head.length
                self._take_upgrade_body(rest)
            else:
                self.trailing = rest
        except httptools.HttpParserError as exc:
            raise ProtocolError(str(exc) or type(exc).__name__) from exc

    def _end_message(self) -> None:
        """The upstream closed: that ends a body delimited by its closing."""
        self._c.complete = True
        self._c.events.append(END)

    def _take_upgrade_body(self, data: bytes) -> None:
        take = data[: self._upgrade_body]
        if take:
            self._c.events.append(take)
        self._upgrade_body -= len(take)
        if self._upgrade_body == 0:
            self._c.events.append(END)
            self.trailing += data[len(take) :]

    def rest_after_head(self) -> bytes:
        """Body bytes that came in the same read as the head."""
        return bytes(self._head_buf[self._head_buf.find(b"\r\n\r\n") + 4 :])

    @property
    def complete(self) -> bool:
        return self._c.complete

    async def relay_raw(self, out: ByteWriter, first: bytes) -> None:
        """Write ``first`` (a head), then the rest of this message as the bytes that come:
        the framing is the upstream's own, so nothing is decoded or encoded again."""
        rest = self.rest_after_head()
        self._c.skip_body = True
        self._c.events = deque(e for e in self._c.events if e is END)
        out.write(first + rest if rest else first)
        await out.drain()
        while not self._c.complete:
            data = await self.reader.read(RELAY_READ_SIZE)
            if not data:
                self.eof = True
                if not self._to_eof:
                    raise ConnectionError("upstream closed in the middle of a response body")
                self._end_message()
                break
            self._feed(data)
            out.write(data)
            await out.drain()
        self._c.events.clear()
        self._c.skip_body = False

    def body_end(self, head: Head) -> BodyEnd | None:
        """How to find the end of request ``head``'s body while relaying it as framed
        (its bytes still unparsed): by its length, or where its chunks end. None if the
        body is to be read as events: a request that upgrades, or an unusual coding."""
        if self.upgraded:
            return None
        if head.chunked:
            return ChunkedEnd()
        return LengthEnd(head.length) if head.length else None

    def body_relayed(self, rest: bytes) -> None:
        """After a body relayed as framed: ``rest`` was read past its end."""
        self.unparsed[:0] = rest
        self._new_parser()  # it saw the head only: it starts again at the next one
        self._c.complete = True  # until that one begins

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()


def encode_head(
    method: str, target: str, headers: list[tuple[str, str]], version: str = "1.1"
) -> bytes:
    """A request head in the client's own HTTP version, header order and spelling."""
    lines = [f"{method} {target} HTTP/{version}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_request_head(head: Head) -> bytes:
    """A request head as parsed, unchanged: each field on one line of its own, so the
    daemon reads the fields plugstrip read, in the client's order and spelling."""
    fields = [b"%s: %s\r\n" % field for field in head.headers]
    line = f"{head.method} {head.target} HTTP/{head.version}\r\n".encode("latin-1")
    return b"".join((line, *fields, b"\r\n"))


def encode_response_head(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    if not reason:
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    lines = [f"HTTP/1.1 {status} {reason}".rstrip()] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"


async def pipe(reader: ByteReader, writer: ByteWriter) -> None:
    """Copy until EOF, then pass the half-close on (attach with stdin closed keeps reading)."""
    try:
        while data := await reader.read(RELAY_READ_SIZE):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if not writer.is_closing():
            try:
                if writer.can_write_eof():
                    writer.write_eof()
            except (OSError, RuntimeError):
                pass
