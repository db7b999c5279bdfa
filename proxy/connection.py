"""One client connection: requests in, hooks, upstream, hooks, responses out.

Each client connection is paired with at most one upstream connection at a time, opened
on its first request and kept alive as long as both sides keep it alive, so the daemon
sees the same connection pattern as without the proxy. A request no adapter matches is
forwarded with its head in the client's own order and its body streamed; a response no
adapter changed is passed on as the bytes that came, as they come. Attach, exec start,
session and grpc become raw byte pipes after the 101 (or the legacy 200 raw-stream)
answer, with half-close passed on and no timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from plugstrip.proxy.adapter_manager import Loaded
from plugstrip.proxy.bulk import plain_sockets, relay_body
from plugstrip.proxy.canonical import BadRequest, canonical_path
from plugstrip.proxy.chunked import BadChunking
from plugstrip.proxy.contract import Call, Headers, HttpRequest, HttpResponse, Peer, Refuse, dumps
from plugstrip.proxy.docker_types import body_schema
from plugstrip.proxy.http1 import (
    END,
    LAST_CHUNK,
    READ_SIZE,
    ByteReader,
    ByteWriter,
    Head,
    HttpSide,
    ProtocolError,
    chunk,
    encode_head,
    encode_request_head,
    encode_response_head,
    pipe,
)
from plugstrip.proxy.metrics import Metrics, endpoint_label
from plugstrip.proxy.pipeline import Chain
from plugstrip.proxy.relay_plan import RelayPlan, relay_plan
from plugstrip.proxy.splice import splice_pipe, spliceable
from plugstrip.proxy.streams import may_hijack
from plugstrip.proxy.trace import Record, Trace
from plugstrip.proxy.upstream import Upstream, UpstreamUnavailable

log = logging.getLogger("plugstrip.proxy")

# Bodies held for adapters (container create, network connect...) are small JSON; larger
# ones are refused rather than held, and streamed bodies are never held.
MAX_HELD_BODY = 16 << 20
# A response slower than this gets a task watching for the client to hang up.
_WATCH_AFTER = 0.05


class _ClientGone(Exception):
    pass


@dataclass
class Shared:
    """What every connection uses; ``loaded`` (the adapters and their pipeline) is
    swapped whole on reload."""

    upstream: Upstream
    loaded: Loaded
    metrics: Metrics
    trace: Trace


def _decode(headers: list[tuple[bytes, bytes]]) -> Headers:
    return Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)


@dataclass
class Exchange:
    """One request and its answer as the connection carries them: made anew for each
    request, so nothing of one call's state reaches the next."""

    head: Head | None = None  # the client's request head
    # The request goes upstream in the client's HTTP version and Connection header, so
    # the daemon frames its answer and keeps the connection (or not) as it would for this
    # client: plugstrip follows it. Only answers of plugstrip's own follow the client's
    # wish directly.
    client_closes: bool = False  # the client asked to close after this call
    endpoint: str = ""  # its metrics label
    must_close: bool = False  # plugstrip closes the client connection after this call
    sent: int = 0  # the status sent to the client (0: none yet)
    hijackable: bool = False  # a call that may turn into a raw pipe
    continued: bool = False  # the client was sent 100 Continue
    early_head: Head | None = None  # a final answer read before the body went
    plan: RelayPlan | None = None  # how the answer is relayed, once its head came
    hooked: tuple[Chain, Call, Record] | None = None  # its adapters, call and trace
    path: str = ""  # its path as the daemon reads it (``canonical_path``)
    # While the daemon answers: a task watching for the client hanging up (started late,
    # by ``timer``), which cancels ``main`` (the relay) and says so in ``client_gone``.
    main: asyncio.Task[Any] | None = None
    timer: asyncio.TimerHandle | None = None
    watcher: asyncio.Task[None] | None = None
    client_gone: bool = False


class ClientConnection:
    def __init__(self, shared: Shared, reader: ByteReader, writer: ByteWriter, peer: Peer) -> None:
        self.shared = shared
        self.client = HttpSide("request", reader, writer)
        self.peer = peer
        self.upstream: HttpSide | None = None
        self.busy = False  # a request is in flight (used by drain)
        self.draining = False  # set on shutdown: close once the call in flight is done
        self.exchange = Exchange()  # the call in flight
        self._upstream_reusable = False

    @property
    def _version(self) -> str:
        """The HTTP version of the request in flight."""
        return self.exchange.head.version if self.exchange.head is not None else "1.1"

    async def serve(self) -> None:
        try:
            while True:
                try:
                    event = await self.client.next()
                except ProtocolError as exc:
                    self.exchange = Exchange(must_close=True)
                    await self._reply_error(exc.status, f"bad request: {exc}")
                    return
                if event is None:
                    return
                assert isinstance(event, Head)
                self.busy = True
                try:
                    keep = await self._exchange(event)
                finally:
                    self.busy = False
                if not keep or self.draining:
                    return
        except _ClientGone:
            pass
        except (ConnectionError, OSError, ProtocolError) as exc:
            log.debug("connection ended: %s", exc)
        except Exception:
            log.exception("bug: connection aborted")
        finally:
            self.close_upstream()
            self.client.close()

    # ---- one request/response exchange -------------------------------------------------

    async def _exchange(self, head: Head) -> bool:
        """Handle one request; False when the connection must close afterwards."""
        self.exchange = ex = Exchange(head, client_closes=not head.keep_alive)
        refused = ""
        try:
            ex.path = canonical_path(head.target.partition("?")[0])
        except BadRequest as exc:  # routed elsewhere by the daemon: no hook could see it
            refused = str(exc)
        ex.endpoint = endpoint_label(ex.path)
        try:
            if refused:
                self.exchange.must_close = True  # its body, if any, is not read
                await self._reply_error(400, f"bad request: {refused}")
                return False
            # The chain matched here fixes the call's adapters, even across a reload.
            chain = self.shared.loaded.pipeline.match(head.method, ex.path)
            ex.hijackable = may_hijack(head.method, ex.path, head.asks_upgrade)
            if chain is None and self.client.complete and not ex.hijackable:
                await self._pass_through(head)  # what pollers call: bench, request rate
            elif chain is None:
                await self._forward(_request(head, ex.path), held=False)
            else:
                await self._intercept(_request(head, ex.path), chain)
        finally:  # hang-ups end in exceptions: count them too
            status = str(self.exchange.sent) if self.exchange.sent else "aborted"
            self.shared.metrics.count_request(self.exchange.endpoint, head.method, status)
        return not self.exchange.must_close

    async def _intercept(self, request: HttpRequest, chain: Chain) -> int:
        held = _holdable(request.headers)
        if held:
            if self._expects_continue(request):  # plugstrip reads the body, as a server
                await self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.exchange.continued = True
            body = await self._read_client_body(MAX_HELD_BODY)
            if body is None:
                self.exchange.must_close = True
                return await self._reply_error(413, f"request body over {MAX_HELD_BODY} bytes")
            request.set_body(body)
            request.schema = body_schema(request.method, request.path) if body else None
            if request.schema is not None:
                try:  # a body Docker defines is read once here, whoever reads it later
                    request.json()
                except Refuse as refusal:
                    return await self._reply_error(refusal.status, refusal.message)
        else:
            request.streamed = _has_body(request.headers)
        call = Call(request.snapshot(), request, self.peer, chain.endpoint)
        record = self.shared.trace.start(
            request.method, request.target, chain.endpoint, self.peer.describe()
        )
        self.exchange.hooked = (chain, call, record)
        try:
            try:
                await self.shared.loaded.pipeline.run("pre_hook", chain, call, record)
            except Refuse as refusal:
                # An unread streamed body cannot be skipped on a kept-alive connection.
                self.exchange.must_close |= not held
                call.status = await self._reply_error(refusal.status, refusal.message)
                return call.status
            if call.response is not None:  # a pre-hook answered: the daemon is not asked
                self.exchange.must_close |= not held
                call.status = await self._answer_here(call, chain, record)
                return call.status
            call.request.settle()
            if held and call.request.body != call.client_request.body:
                _set_length(call.request.headers, call.request.body)
            call.status = await self._forward(call.request, held)
            return call.status
        finally:
            record.status = call.status
            await self.shared.loaded.pipeline.finish(chain, call)

    async def _answer_here(self, call: Call, chain: Chain, record: Record) -> int:
        """Send the answer a pre-hook gave, after the post-hooks have seen it."""
        try:
            await self.shared.loaded.pipeline.run("post_hook", chain, call, record)
        except Refuse as refusal:
            return await self._reply_error(refusal.status, refusal.message)
        response = call.response
        assert response is not None
        response.settle()
        _set_length(response.headers, response.body)
        self.exchange.must_close |= self.exchange.client_closes
        if self.exchange.must_close:
            response.headers.set("Connection", "close")
        self.exchange.sent = response.status
        await self.client.write(
            encode_response_head(response.status, "", list(response.headers))
            + (response.body or b"")
        )
        return response.status

    async def _forward(self, request: HttpRequest, held: bool) -> int:
        """Send ``request`` upstream and relay the answer; returns the status sent."""
        try:
            up = await self._send_request(request, held)
        except UpstreamUnavailable as exc:
            self.exchange.must_close |= not held
            return await self._reply_error(502, str(exc))
        return await self._watching(self._answer(up, request))

    async def _pass_through(self, head: Head) -> int:
        """A call no adapter matches, with no body, that cannot take the connection over:
        its head goes as parsed, with no request object made, and its answer is relayed
        as received."""
        if await self.client.next() is not END:  # its body's end, come with the head
            raise ProtocolError("a request without a body had one", 500)
        try:
            up = await self._upstream_side()
        except UpstreamUnavailable as exc:
            return await self._reply_error(502, str(exc))
        up.expect_response(head.method)
        try:
            await up.write(encode_request_head(head))
        except (ConnectionError, OSError):
            log.debug("upstream closed as the request went")  # reading its answer says
        return await self._watching(self._answer(up, None))

    async def _watching(self, answer: Coroutine[Any, Any, int]) -> int:
        """Await ``answer`` (relaying the daemon's answer) while watching for the client
        hanging up. Most answers come at once; only a slow one (or a stream) gets a
        watcher, so quick calls pay no extra task."""
        self.exchange.main = asyncio.current_task()
        self.exchange.timer = asyncio.get_running_loop().call_later(
            _WATCH_AFTER, self._start_watcher
        )
        try:
            return await answer
        except asyncio.CancelledError:
            if self.exchange.client_gone:
                raise _ClientGone() from None
            raise
        finally:
            await self._stop_watcher()

    async def _answer(self, up: HttpSide, request: HttpRequest | None) -> int:
        """Relay the answer to ``request`` (None: a pass-through call, whose request
        object is made only if its answer needs more than to be passed on)."""
        started = time.perf_counter()
        head = await self._response_head(up)
        self.shared.metrics.observe_upstream(self.exchange.endpoint, time.perf_counter() - started)
        hooked = self.exchange.hooked
        if hooked is not None and not hooked[0].post:
            hooked = None  # no post-hooks on this call: the answer streams past
        if hooked is None and not self.exchange.hijackable and head.status != 101:
            # relay_plan's answer here, without the objects it is asked with
            self.exchange.plan = RelayPlan(keep_alive=head.keep_alive)
            await self._relay(up, head, None, False, b"")
            return head.status
        response = HttpResponse(head.status, _decode(head.headers))
        assert self.exchange.head is not None
        request = request or _request(self.exchange.head, self.exchange.path)
        self.exchange.plan = plan = relay_plan(
            request, head, response.content_type, hooked is not None, self.exchange.hijackable
        )
        prefix = b""  # body already read (and decoded) for post-hooks, if any
        changed = False
        if hooked is not None:
            chain, call, record = hooked
            response.streaming = True
            if plan.hold:
                body, complete = await self._read_upstream_body(up, MAX_HELD_BODY)
                if complete:
                    response.set_body(body)
                    response.streaming = False
                else:
                    prefix = body
            call.response = response
            before = response.snapshot()
            try:
                await self.shared.loaded.pipeline.run("post_hook", chain, call, record)
            except Refuse as refusal:
                if not up.complete:
                    self.close_upstream()
                return await self._reply_error(refusal.status, refusal.message)
            response = call.response
            response.settle()
            changed = (response.status, list(response.headers)) != (
                before.status,
                list(before.headers),
            )
            if not response.streaming and response.body != before.body:
                _set_length(response.headers, response.body)
                changed = True
        if plan.pipe:
            await self._hijack(up, response, head, plan.legacy, changed)
            return response.status
        await self._relay(up, head, response, changed, prefix)
        return response.status

    async def _relay(
        self, up: HttpSide, head: Head, response: HttpResponse | None, changed: bool, prefix: bytes
    ) -> None:
        """Pass the response on: as received when nothing changed it (``response`` None: no
        adapter saw it), else with a head of ours; a body is framed as the daemon framed
        it unless an adapter rewrote it."""
        self.exchange.sent = head.status if response is None else response.status
        if response is not None and not response.streaming and response.body is not None:
            # held, maybe rewritten
            body = response.body
            if (response.headers.get("Transfer-Encoding") or "").lower() == "chunked":
                body = (chunk(body) if body else b"") + LAST_CHUNK  # held whole, unchanged
            await self.client.write(self._first_bytes(head, response, changed) + body)
        elif not prefix:
            first = self._first_bytes(head, response, changed)
            await self._streaming(up.relay_raw(self.client.writer, first))
        else:
            await self.client.write(self._head_bytes(head, response))
            await self._streaming(self._relay_decoded(up, prefix, head.chunked))
        assert self.exchange.plan is not None
        keep_alive = self.exchange.plan.keep_alive
        self._upstream_reusable = keep_alive and up.complete
        if not keep_alive:
            self.exchange.must_close = True
        if self.client.upgraded:  # it asked to switch protocols, and the daemon did not
            self.client.after_refused_upgrade()

    def _first_bytes(
        self, head: Head, response: HttpResponse | None = None, changed: bool = False
    ) -> bytes:
        """The head as received, unless it changed or plugstrip will close a connection the
        daemon keeps open: then the client must be told (RFC 9112 §9.6)."""
        if changed or (self.exchange.must_close and head.keep_alive):
            return self._head_bytes(head, response)
        return head.raw

    def _head_bytes(self, head: Head, response: HttpResponse | None) -> bytes:
        """A head of ours: ``response``'s (None: the daemon's, as parsed)."""
        if response is None:
            response = HttpResponse(head.status, _decode(head.headers))
        headers = list(response.headers)
        if self.exchange.must_close:
            headers = [(k, v) for k, v in headers if k.lower() != "connection"]
            headers.append(("Connection", "close"))
        return encode_response_head(response.status, head.reason, headers)

    async def _streaming(self, relay: Any) -> None:
        """Run a body's relay; a body still coming is an open stream, and gets a watcher
        at once (a stream may go quiet for long: notice a hang-up now)."""
        if self.upstream is not None and self.upstream.complete:
            await relay  # all of it came with the head
            return
        metrics = self.shared.metrics
        metrics.open_streams.inc()
        self._start_watcher()
        try:
            await relay
        finally:
            metrics.open_streams.dec()

    async def _relay_decoded(self, up: HttpSide, prefix: bytes, chunked: bool) -> None:
        out = self.client
        if prefix:
            await out.write(chunk(prefix) if chunked else prefix)
        while (event := await up.next()) is not END:
            if not isinstance(event, bytes):
                raise ConnectionError("upstream closed in the middle of a response body")
            await out.write(chunk(event) if chunked else event)
        if chunked:
            await out.write(LAST_CHUNK)

    # ---- upstream side -----------------------------------------------------------------

    async def _send_request(self, request: HttpRequest, held: bool) -> HttpSide:
        up = await self._upstream_side()
        up.expect_response(request.method)  # nothing can answer before the request goes
        head = encode_head(
            request.method, request.wire_target, list(request.headers), self._version
        )
        chunked = (request.headers.get("Transfer-Encoding") or "").lower() == "chunked"
        try:
            if held:
                body = request.body or b""
                if chunked:
                    body = chunk(body) + LAST_CHUNK
                await up.write(head + body)
                return up
            await up.write(head)
            if self._expects_continue(request) and not self.exchange.continued:
                # The client sends the body once told to: only the daemon may tell it.
                first = await self._next_answer(up, until_continue=True)
                if first is not None:
                    self.exchange.early_head = first
                    self.exchange.must_close = True  # its body was never read
                    return up
            await self._send_client_body(up, chunked)
        except (ConnectionError, OSError):
            # The daemon may answer (say, an error) before reading the whole body; the
            # answer is still readable.
            log.debug("upstream stopped reading the request body")
        return up

    def _expects_continue(self, request: HttpRequest) -> bool:
        """An HTTP/1.1 client waiting for 100 Continue before it sends a body."""
        headers = request.headers
        if (headers.get("Expect") or "").lower() != "100-continue" or self._version != "1.1":
            return False  # nearly every call: one header looked up
        chunked = (headers.get("Transfer-Encoding") or "").lower() == "chunked"
        return chunked or (headers.get("Content-Length") or "0") != "0"

    async def _upstream_side(self) -> HttpSide:
        up = self.upstream
        if up is not None and self._upstream_reusable and not up.reader.at_eof():
            self._upstream_reusable = False
            return up
        self.close_upstream()
        reader, writer = await self.shared.upstream.open()
        self.upstream = HttpSide("response", reader, writer)
        return self.upstream

    async def _response_head(self, up: HttpSide) -> Head:
        """The final answer's head (it may have come before the request body went)."""
        head = self.exchange.early_head or await self._next_answer(up)
        self.exchange.early_head = None
        assert head is not None  # only until_continue answers None
        return head

    async def _next_answer(self, up: HttpSide, until_continue: bool = False) -> Head | None:
        """The final answer's head, passing interim answers (1xx) on to the client as they
        came, but a second 100 Continue (plugstrip may have sent one itself). With
        ``until_continue``: None as soon as a 100 Continue has been passed on."""
        while True:
            event = await up.next()
            if not isinstance(event, Head):
                raise ConnectionError(f"upstream closed before answering ({event!r})")
            if not 100 <= event.status < 200 or event.status == 101:
                return event
            await up.next()  # its END
            if event.status == 100 and self.exchange.continued:
                continue
            await self.client.write(event.raw)
            if event.status == 100:
                self.exchange.continued = True
                if until_continue:
                    return None

    async def _read_upstream_body(self, up: HttpSide, limit: int) -> tuple[bytes, bool]:
        """Up to ``limit`` bytes of the body; complete=False if it is longer (the rest then
        streams)."""
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            event = await up.next()
            if event is END:
                return b"".join(parts), True
            if not isinstance(event, bytes):
                raise ConnectionError("upstream closed in the middle of a response body")
            parts.append(event)
            size += len(event)
        return b"".join(parts), False

    def close_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self._upstream_reusable = False

    # ---- client side -------------------------------------------------------------------

    async def _read_client_body(self, limit: int) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        while (event := await self.client.next()) is not END:
            if not isinstance(event, bytes):
                raise _ClientGone()
            size += len(event)
            if size > limit:
                return None
            parts.append(event)
        return b"".join(parts)

    async def _send_client_body(self, up: HttpSide, chunked: bool) -> None:
        """A body no adapter reads: between plain sockets, relayed as framed off the loop
        (bench: uploads); else as parsed events, framed again."""
        client = self.client
        assert self.exchange.head is not None
        end_of = client.body_end(self.exchange.head)
        if (
            end_of is None
            or (ends := plain_sockets(client.reader, client.writer, up.writer)) is None
        ):
            await self._stream_client_body(up, chunked)
            return
        first = bytes(client.unparsed)
        client.unparsed.clear()
        try:
            rest = await relay_body(ends, end_of, first)
        except BadChunking as exc:
            raise ProtocolError(f"bad chunked encoding: {exc}") from exc
        client.body_relayed(rest)

    async def _stream_client_body(self, up: HttpSide, chunked: bool) -> None:
        while (event := await self.client.next()) is not END:
            if not isinstance(event, bytes):
                raise _ClientGone()
            await up.write(chunk(event) if chunked else event)
        if chunked:
            await up.write(LAST_CHUNK)

    def _start_watcher(self) -> None:
        if self.exchange.watcher is None:
            self.exchange.watcher = asyncio.create_task(self._watch_client())

    async def _stop_watcher(self) -> None:
        """No watcher now, nor later: a splice reads the client itself from here on."""
        if self.exchange.timer is not None:
            self.exchange.timer.cancel()
            self.exchange.timer = None
        if self.exchange.watcher is not None:
            self.exchange.watcher.cancel()
            await asyncio.gather(self.exchange.watcher, return_exceptions=True)
            self.exchange.watcher = None

    async def _watch_client(self) -> None:
        """Read ahead from the client while a response is pending or streaming, and end the
        call if the client hangs up. The bytes are kept unparsed: a hijack's early stdin,
        or the next request. A hijack's client may half-close early: kept for the pipe."""
        client = self.client
        while len(client.unparsed) < MAX_HELD_BODY:
            data = await client.reader.read(READ_SIZE)
            if not data:
                client.eof = True
                if not self.exchange.hijackable and self.exchange.main is not None:
                    self.exchange.client_gone = True
                    self.exchange.main.cancel()
                return
            client.unparsed += data
        await asyncio.Event().wait()  # enough read ahead: let TCP push back

    async def _reply_error(self, status: int, message: str) -> int:
        """Docker's error shape, which the CLI prints as 'Error response from daemon: ...'."""
        if self.exchange.sent:
            return status
        self.exchange.sent = status
        body = dumps({"message": message}) + b"\n"
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        self.exchange.must_close |= self.exchange.client_closes
        if self.exchange.must_close:
            headers.append(("Connection", "close"))
        if self.exchange.head is not None and self.exchange.head.method == "HEAD":
            body = b""  # an answer to HEAD has its head only (RFC 9110 §9.3.2)
        await self.client.write(encode_response_head(status, "", headers) + body)
        return status

    # ---- hijacks -----------------------------------------------------------------------

    async def _hijack(
        self, up: HttpSide, response: HttpResponse, head: Head, legacy: bool, changed: bool
    ) -> None:
        self.exchange.sent = response.status
        first = self._head_bytes(head, response) if changed else head.raw
        await self._stop_watcher()  # from here the pipe reads the client
        client = self.client
        client_early = client.trailing + bytes(client.unparsed)
        upstream_early = up.rest_after_head() if legacy else up.trailing
        metrics = self.shared.metrics
        metrics.open_hijacks.inc()
        try:
            await client.write(first + upstream_early)
            if client_early:
                await up.write(client_early)
            if (
                not client.eof
                and spliceable(client.reader, client.writer)
                and spliceable(up.reader, up.writer)
            ):
                # plain sockets: the bytes never reach Python (bench: docker exec output)
                await splice_pipe((client.reader, client.writer), (up.reader, up.writer))
            else:
                await self._pipe_both_ways(up)
        finally:
            metrics.open_hijacks.dec()
            self.close_upstream()
        self.exchange.must_close = True  # the pipe is over: so is the connection

    async def _pipe_both_ways(self, up: HttpSide) -> None:
        client = self.client
        if client.eof:
            up.writer.write_eof()
            to_upstream: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            to_upstream.set_result(None)
        else:
            to_upstream = asyncio.ensure_future(pipe(client.reader, up.writer))
        to_client = asyncio.ensure_future(pipe(up.reader, client.writer))
        await asyncio.gather(to_upstream, to_client)


def _request(head: Head, path: str) -> HttpRequest:
    """The request object adapters see, for request ``head`` (``path``: canonical)."""
    raw_path, _, query = head.target.partition("?")
    return HttpRequest(head.method, path, query, _decode(head.headers), raw_path=raw_path)


def _holdable(headers: Headers) -> bool:
    """Hold a request body for adapters only if it is JSON (or absent): tar build contexts,
    image loads and archive uploads stream straight through."""
    ctype = headers.get("Content-Type")
    if ctype is not None and "json" not in ctype.lower():
        return False
    length = headers.get("Content-Length")
    return length is None or not length.isdigit() or int(length) <= MAX_HELD_BODY


def _has_body(headers: Headers) -> bool:
    length = headers.get("Content-Length")
    return "Transfer-Encoding" in headers or (length is not None and length.strip() != "0")


def _set_length(headers: Headers, body: bytes | None) -> None:
    headers.remove("Transfer-Encoding")
    headers.set("Content-Length", str(len(body or b"")))
