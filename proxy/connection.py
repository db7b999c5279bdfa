"""One client connection: requests in, hooks, upstream, hooks, responses out.

Each client connection is paired with at most one upstream connection at a time, opened
on its first request and kept alive as long as both sides keep it alive, so the daemon
sees the same connection pattern as without the proxy. A request no adapter matches is
forwarded with its head as received and its body streamed; a response is passed on event
by event as it arrives. Attach, exec start, session and grpc become raw byte pipes after
the 101 (or the legacy 200 raw-stream) answer, with half-close passed on and no timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import h11

from adapters.contract import Call, Headers, HttpRequest, HttpResponse, Peer, Refuse, dumps
from proxy.http1 import (
    ByteReader,
    ByteWriter,
    H11Stream,
    encode_head,
    encode_response_head,
    pipe,
)
from proxy.metrics import Metrics, endpoint_label
from proxy.pipeline import Chain, Pipeline
from proxy.streams import RAW_STREAM_TYPES, is_json_stream, may_hijack
from proxy.trace import Record, Trace
from proxy.upstream import Upstream, UpstreamUnavailable

log = logging.getLogger("plugstrip.proxy")

# Bodies held for adapters (container create, network connect...) are small JSON; larger
# ones are refused rather than held, and streamed bodies are never held.
MAX_HELD_BODY = 16 << 20
# A response slower than this gets a task watching for the client to hang up.
_WATCH_AFTER = 0.05


class _Hijacked(Exception):
    """The connection became a raw pipe and is finished."""


class _ClientGone(Exception):
    pass


@dataclass
class Shared:
    """What every connection uses; ``pipeline`` is swapped whole on reload."""

    upstream: Upstream
    pipeline: Pipeline
    metrics: Metrics
    trace: Trace


class ClientConnection:
    def __init__(
        self,
        shared: Shared,
        reader: ByteReader,
        writer: ByteWriter,
        peer: Peer,
    ) -> None:
        self.shared = shared
        self.client = H11Stream(h11.SERVER, reader, writer)
        self.peer = peer
        self.upstream: H11Stream | None = None
        self.busy = False  # a request is in flight (used by drain)
        self.draining = False  # set on shutdown: close once the call in flight is done
        self._must_close = False
        self._watcher: asyncio.Task[None] | None = None
        self._main: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._hijackable = False
        self._client_gone = False

    async def serve(self) -> None:
        try:
            while True:
                try:
                    event = await self.client.next_event()
                except h11.RemoteProtocolError as exc:
                    # h11 will not answer a request it could not parse: write it ourselves.
                    body = dumps({"message": f"bad request: {exc}"}) + b"\n"
                    await self.client.write_raw(
                        encode_response_head(
                            exc.error_status_hint,
                            "",
                            [
                                ("Content-Type", "application/json"),
                                ("Content-Length", str(len(body))),
                                ("Connection", "close"),
                            ],
                        )
                        + body
                    )
                    return
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed, or junk after a finished exchange
                self.busy = True
                try:
                    if not await self._exchange(event):
                        return
                finally:
                    self.busy = False
                if self.draining or self.client.conn.our_state is not h11.DONE:
                    return
                if self.client.conn.their_state is not h11.DONE:
                    return
                self.client.conn.start_next_cycle()
        except (_Hijacked, _ClientGone):
            pass
        except (ConnectionError, OSError, h11.ProtocolError) as exc:
            log.debug("connection ended: %s", exc)
        except Exception:
            log.exception("bug: connection aborted")
        finally:
            self.close_upstream()
            self.client.close()

    # ---- one request/response exchange -------------------------------------------------

    async def _exchange(self, event: Any) -> bool:
        """Handle one request; False when the connection must close afterwards."""
        method = event.method.decode("ascii")
        target = event.target.decode("latin-1")
        headers = Headers(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()
        )
        request = HttpRequest(method, *_split_target(target), headers)
        self._must_close = False
        if "Transfer-Encoding" in headers and "Content-Length" in headers:
            # A request smuggling vector through any proxy: refuse rather than guess.
            self._must_close = True
            status = await self._reply_error(
                400, "conflicting Content-Length and Transfer-Encoding"
            )
        else:
            chain = self.shared.pipeline.match(method, request.path)
            if chain is None:
                status = await self._forward(request, None, None, None, False, event)
            else:
                status = await self._intercept(request, chain)
        self.shared.metrics.requests.labels(endpoint_label(request.path), method, str(status)).inc()
        return not self._must_close

    async def _intercept(self, request: HttpRequest, chain: Chain) -> int:
        held = _holdable(request.headers)
        if held:
            body = await self._read_client_body(MAX_HELD_BODY)
            if body is None:
                self._must_close = True
                return await self._reply_error(413, f"request body over {MAX_HELD_BODY} bytes")
            request.set_body(body)
        call = Call(request.snapshot(), request, self.peer, chain.endpoint)
        record = self.shared.trace.start(
            request.method, request.target, chain.endpoint, self.peer.describe()
        )
        pipeline = self.shared.pipeline  # the one this call started with, even over a reload
        try:
            try:
                await pipeline.run("pre_hook", chain, call, record)
            except Refuse as refusal:
                # An unread streamed body cannot be skipped on a kept-alive connection.
                self._must_close = not held
                call.status = await self._reply_error(refusal.status, refusal.message)
                return call.status
            call.request.settle()
            if held and call.request.body != call.client_request.body:
                _set_length(call.request.headers, call.request.body)
            call.status = await self._forward(call.request, chain, call, record, held)
            return call.status
        finally:
            record.status = call.status
            await pipeline.finish(chain, call)

    async def _forward(
        self,
        request: HttpRequest,
        chain: Chain | None,
        call: Call | None,
        record: Record | None,
        held: bool,
        unchanged: Any = None,
    ) -> int:
        """Send ``request`` upstream and relay the answer; returns the status sent.
        ``unchanged`` is the client's parsed h11 request when it goes up as it came."""
        try:
            up = await self._send_request(request, held, unchanged)
        except UpstreamUnavailable as exc:
            self._must_close = not held
            return await self._reply_error(502, str(exc))
        self._hijackable = may_hijack(request.method, request.path, "Upgrade" in request.headers)
        self._main = asyncio.current_task()
        # Most answers come at once; only a slow one (or a stream) gets a watcher for the
        # client hanging up, so quick calls pay no extra task.
        self._timer = asyncio.get_running_loop().call_later(_WATCH_AFTER, self._start_watcher)
        try:
            return await self._answer(up, request, chain, call, record)
        except asyncio.CancelledError:
            if self._client_gone:
                raise _ClientGone() from None
            raise
        finally:
            await self._stop_watcher()

    def _start_watcher(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_client())

    async def _stop_watcher(self) -> None:
        """No watcher now, nor later: a splice reads the client itself from here on."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None

    async def _answer(
        self,
        up: H11Stream,
        request: HttpRequest,
        chain: Chain | None,
        call: Call | None,
        record: Record | None,
    ) -> int:
        started = time.perf_counter()
        event = await self._response_head(up)
        self.shared.metrics.upstream_latency.labels(endpoint_label(request.path)).observe(
            time.perf_counter() - started
        )
        response = HttpResponse(
            event.status_code,
            Headers(
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()
            ),
        )
        reason = event.reason.decode("latin-1")
        switching = event.status_code == 101
        legacy = (
            event.status_code == 200
            and may_hijack(request.method, request.path, "Upgrade" in request.headers)
            and response.content_type in RAW_STREAM_TYPES
            and "Content-Length" not in response.headers
            and "Transfer-Encoding" not in response.headers
        )
        leftover = b""
        if chain is not None and chain.post and call is not None and record is not None:
            hold = (
                not (switching or legacy)
                and request.method != "HEAD"
                and "json" in response.content_type
                and not is_json_stream(request.method, request.path, request.query)
            )
            response.streaming = True
            if hold:
                body, complete = await self._read_upstream_body(up, MAX_HELD_BODY)
                if complete:
                    response.set_body(body)
                    response.streaming = False
                else:
                    leftover = body
            call.response = response
            held_body = response.body
            try:
                await self.shared.pipeline.run("post_hook", chain, call, record)
            except Refuse as refusal:
                if response.streaming:
                    self.close_upstream()
                return await self._reply_error(refusal.status, refusal.message)
            response = call.response
            response.settle()
            if not response.streaming and response.body != held_body:
                _set_length(response.headers, response.body)
        if switching or legacy:
            await self._hijack(up, response, reason, legacy)
        await self.client.send(
            h11.Response(status_code=response.status, headers=list(response.headers), reason=reason)
        )
        if not response.streaming and response.body is not None:
            if response.body:
                await self.client.send(h11.Data(data=response.body))
            await self.client.send(h11.EndOfMessage())
        else:
            if leftover:
                await self.client.send(h11.Data(data=leftover))
            await self._relay_body(up)
        self._finish_upstream_cycle(up)
        return response.status

    # ---- upstream side -----------------------------------------------------------------

    async def _send_request(self, request: HttpRequest, held: bool, unchanged: Any) -> H11Stream:
        up = await self._upstream_stream()
        headers = list(request.headers)
        if request.headers.get("Host") is None:
            headers.append(("Host", "docker"))  # HTTP/1.0 clients may omit it; h11 won't
            unchanged = None
        # h11 only tracks the state here; the head is written in the client's own order.
        up.conn.send(
            unchanged or h11.Request(method=request.method, target=request.target, headers=headers)
        )
        await up.write_raw(encode_head(request.method, request.target, headers))
        try:
            if held:
                if request.body:
                    await up.send(h11.Data(data=request.body))
                await up.send(h11.EndOfMessage())
            else:
                await self._stream_client_body(up)
        except (ConnectionError, OSError):
            # The daemon may answer (say, an error) before reading the whole body; the
            # answer is still readable.
            log.debug("upstream stopped reading the request body")
        return up

    async def _upstream_stream(self) -> H11Stream:
        up = self.upstream
        if up is not None and up.conn.our_state is h11.IDLE and not up.reader.at_eof():
            return up
        self.close_upstream()
        reader, writer = await self.shared.upstream.open()
        self.upstream = H11Stream(h11.CLIENT, reader, writer)
        return self.upstream

    async def _response_head(self, up: H11Stream) -> Any:
        """The response head, passing 100 Continue on to the client."""
        while True:
            event = await up.next_event()
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                await self.client.send(event)
                continue
            if isinstance(event, h11.InformationalResponse | h11.Response):
                return event
            raise ConnectionError(f"upstream closed before answering ({event!r})")

    async def _watch_client(self) -> None:
        """Read ahead from the client while a response is pending or streaming, and end the
        call if the client hangs up. Early bytes of a hijack land in h11's buffer, kept; a
        hijack's client may half-close before the answer, which is kept for the pipe."""
        while len(self.client.conn.trailing_data[0]) < MAX_HELD_BODY:
            data = await self.client.reader.read(1 << 16)
            self.client.conn.receive_data(data)
            if not data:
                if not self._hijackable and self._main is not None:
                    self._client_gone = True
                    self._main.cancel()
                return
        await asyncio.Event().wait()  # enough read ahead: let TCP push back

    async def _read_upstream_body(self, up: H11Stream, limit: int) -> tuple[bytes, bool]:
        """Up to ``limit`` bytes of the body; complete=False if it is longer (the rest then
        streams)."""
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            event = await up.next_event()
            if isinstance(event, h11.EndOfMessage):
                return b"".join(parts), True
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
                size += len(event.data)
            else:
                raise ConnectionError("upstream closed in the middle of a response body")
        return b"".join(parts), False

    async def _relay_body(self, up: H11Stream) -> None:
        metrics = self.shared.metrics
        metrics.open_streams.inc()
        self._start_watcher()
        try:
            while True:
                event = await up.next_event()
                if isinstance(event, h11.Data):
                    await self.client.send(h11.Data(data=event.data))
                elif isinstance(event, h11.EndOfMessage):
                    await self.client.send(h11.EndOfMessage())
                    return
                else:
                    raise ConnectionError("upstream closed in the middle of a response body")
        finally:
            metrics.open_streams.dec()

    def _finish_upstream_cycle(self, up: H11Stream) -> None:
        if up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE:
            up.conn.start_next_cycle()
        else:
            self.close_upstream()

    def close_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    # ---- client side -------------------------------------------------------------------

    async def _read_client_body(self, limit: int) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        while True:
            event = await self.client.next_event()
            if isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            if not isinstance(event, h11.Data):
                raise _ClientGone()
            size += len(event.data)
            if size > limit:
                return None
            parts.append(bytes(event.data))

    async def _stream_client_body(self, up: H11Stream) -> None:
        while True:
            event = await self.client.next_event()
            if isinstance(event, h11.EndOfMessage):
                await up.send(h11.EndOfMessage())
                return
            if not isinstance(event, h11.Data):
                raise _ClientGone()
            await up.send(h11.Data(data=event.data))

    async def _reply_error(self, status: int, message: str) -> int:
        """Docker's error shape, which the CLI prints as 'Error response from daemon: ...'."""
        if self.client.conn.our_state is not h11.SEND_RESPONSE:
            return status
        body = dumps({"message": message}) + b"\n"
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        if self._must_close:
            headers.append(("Connection", "close"))
        await self.client.send(h11.Response(status_code=status, headers=headers))
        await self.client.send(h11.Data(data=body))
        await self.client.send(h11.EndOfMessage())
        return status

    # ---- hijacks -----------------------------------------------------------------------

    async def _hijack(
        self, up: H11Stream, response: HttpResponse, reason: str, legacy: bool
    ) -> None:
        asked = self.client.conn.their_state is h11.MIGHT_SWITCH_PROTOCOL  # type: ignore[attr-defined]
        if not legacy and asked:
            await self.client.send(
                h11.InformationalResponse(
                    status_code=101, headers=list(response.headers), reason=reason
                )
            )
        else:
            # A legacy 200 raw stream (h11 would re-frame a body-until-close answer as
            # chunked), or a 101 the client did not ask for: write the head as is.
            await self.client.write_raw(
                encode_response_head(response.status, reason, list(response.headers))
            )
        await self._splice(up)

    async def _splice(self, up: H11Stream) -> None:
        await self._stop_watcher()  # from here the pipe reads the client
        client_early, client_eof = self.client.conn.trailing_data
        upstream_early = up.trailing
        metrics = self.shared.metrics
        metrics.open_hijacks.inc()
        try:
            if upstream_early:
                await self.client.write_raw(upstream_early)
            if client_early:
                await up.write_raw(bytes(client_early))
            if client_eof and up.writer.can_write_eof():
                up.writer.write_eof()
                to_upstream: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                to_upstream.set_result(None)
            else:
                to_upstream = asyncio.ensure_future(pipe(self.client.reader, up.writer))
            to_client = asyncio.ensure_future(pipe(up.reader, self.client.writer))
            await asyncio.gather(to_upstream, to_client)
        finally:
            metrics.open_hijacks.dec()
            self.close_upstream()
        raise _Hijacked()


def _split_target(target: str) -> tuple[str, str]:
    path, _, query = target.partition("?")
    return path, query


def _holdable(headers: Headers) -> bool:
    """Hold a request body for adapters only if it is JSON (or absent): tar build contexts,
    image loads and archive uploads stream straight through."""
    ctype = headers.get("Content-Type")
    if ctype is not None and "json" not in ctype:
        return False
    length = headers.get("Content-Length")
    return length is None or not length.isdigit() or int(length) <= MAX_HELD_BODY


def _set_length(headers: Headers, body: bytes | None) -> None:
    headers.remove("Transfer-Encoding")
    headers.set("Content-Length", str(len(body or b"")))
