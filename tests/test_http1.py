"""The HTTP/1.1 layer on real socket pairs: framing edge cases met on the way."""

from __future__ import annotations

import asyncio
import socket

import pytest

from plugstrip.proxy.http1 import END, MAX_HEAD, Head, HttpSide, ProtocolError

_FEEDERS: set[asyncio.Task[None]] = set()


async def side(kind: str, *chunks: bytes) -> tuple[HttpSide, asyncio.StreamWriter]:
    """An HttpSide reading what the peer end writes, chunk by chunk (separate reads)."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    _, peer = await asyncio.open_connection(sock=theirs)
    s = HttpSide(kind, reader, writer)  # type: ignore[arg-type]

    async def feed() -> None:
        for c in chunks:
            peer.write(c)
            await peer.drain()
            await asyncio.sleep(0.01)

    # in the background: a large write would wait for a reader that has not started
    _FEEDERS.add(asyncio.create_task(feed()))
    await asyncio.sleep(0.05)
    return s, peer


async def events(s: HttpSide, n: int) -> list[object]:
    return [await asyncio.wait_for(s.next(), 5) for _ in range(n)]


async def test_pipelined_requests_in_one_read() -> None:
    s, _ = await side(
        "request",
        b"GET /a HTTP/1.1\r\nHost: d\r\n\r\n"
        b"POST /b?x=1 HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\nhi",
    )
    got = await events(s, 5)
    assert isinstance(got[0], Head) and got[0].target == "/a" and got[1] is END
    assert isinstance(got[2], Head) and (got[2].method, got[2].target) == ("POST", "/b?x=1")
    assert got[3:] == [b"hi", END]


def last_head(got: list[object]) -> Head:
    """The last head among ``got``: the final answer, after any interim ones."""
    return [g for g in got if isinstance(g, Head)][-1]


async def until_end(s: HttpSide) -> list[object]:
    got: list[object] = []
    while not got or got[-1] is not END:
        got.append(await asyncio.wait_for(s.next(), 5))
    return got


async def test_upgrade_request_keeps_its_body_split_across_reads() -> None:
    head = (
        b"POST /exec/x/start HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\n"
        b"Upgrade: tcp\r\nContent-Length: 12\r\n\r\n"
    )
    s, peer = await side("request", head + b'{"Tty"')
    first = await s.next()
    assert isinstance(first, Head) and first.upgrade
    assert await s.next() == b'{"Tty"'
    peer.write(b":true}STDIN")  # the rest of the body, then raw bytes, in a later read
    await peer.drain()
    assert await until_end(s) == [b":true}", END]
    assert s.upgraded and s.trailing == b"STDIN"


async def test_head_response_ends_at_its_head() -> None:
    s, _ = await side("response", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    s.expect_response("HEAD")
    got = await events(s, 2)
    assert isinstance(got[0], Head) and got[0].status == 200 and got[1] is END


async def test_continue_then_response_is_relayed_raw() -> None:
    final = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n"
    s, _ = await side("response", b"HTTP/1.1 100 Continue\r\n\r\n" + final + b"ok")
    s.expect_response("POST")
    got = await events(s, 5)
    assert [g.status for g in got if isinstance(g, Head)] == [100, 201]
    assert got[-2:] == [b"ok", END] and last_head(got).raw == final


@pytest.mark.parametrize(
    ("method", "raw"),
    [
        # dockerd's stat of an existing path: a HEAD answered with no length header at all
        ("HEAD", b"HTTP/1.1 200 OK\r\nX-Docker-Container-Path-Stat: e30=\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("DELETE", b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
        ("GET", b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\n\r\n"),
    ],
)
async def test_bodiless_answers_end_at_their_head_and_keep_the_connection(
    method: str, raw: bytes
) -> None:
    """RFC 9112 §6.3: HEAD, 204 and 304 have no body whatever their headers say, and the
    next answer on the connection parses from the byte after the head."""
    after = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    s, peer = await side("response", raw)
    s.expect_response(method)
    got = await events(s, 2)
    assert isinstance(got[0], Head) and got[1] is END and s.complete
    assert got[0].keep_alive and got[0].raw == raw
    s.expect_response("GET")
    peer.write(after)
    await peer.drain()
    assert (await until_end(s))[1:] == [b"ok", END]


async def test_bodiless_answer_and_the_next_in_one_read() -> None:
    s, _ = await side(
        "response",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 199 Odd\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    )
    s.expect_response("HEAD")
    got = await events(s, 6)
    assert [g.status for g in got if isinstance(g, Head)] == [103, 199, 200]
    assert [g for g in got if g is END] == [END] * 3


async def test_connection_close_on_a_bodiless_answer() -> None:
    s, _ = await side("response", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    s.expect_response("HEAD")
    head = await s.next()
    assert isinstance(head, Head) and not head.keep_alive


async def test_body_with_no_length_runs_to_eof() -> None:
    s, peer = await side("response", b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nab")
    s.expect_response("GET")
    head = await s.next()
    assert isinstance(head, Head) and not head.keep_alive
    assert await s.next() == b"ab"
    peer.write(b"cd")
    await peer.drain()
    peer.close()
    assert await until_end(s) == [b"cd", END] and s.complete


async def test_one_parser_across_kept_alive_responses() -> None:
    """Responses on one upstream connection, each asked for after the one before: the
    parser goes on between them, and is renewed after a HEAD (whose Content-Length
    announces a body that never comes)."""
    s, peer = await side("response")

    async def answer(method: str, raw: bytes) -> list[object]:
        s.expect_response(method)
        peer.write(raw)
        await peer.drain()
        return await until_end(s)

    plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    got = await answer("GET", plain + b"ok")
    assert got[1:] == [b"ok", END] and last_head(got).raw == plain
    got = await answer("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert isinstance(got[0], Head) and got[1:] == [END]
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    got = await answer("GET", chunked + b"3\r\nabc\r\n0\r\n\r\n")
    assert got[1:] == [b"abc", END] and last_head(got).raw == chunked
    got = await answer(
        "POST", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    )
    got += await until_end(s)  # the 100's END, then the answer's
    assert [g.status for g in got if isinstance(g, Head)] == [100, 201]
    assert last_head(got).raw == b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    got = await answer("GET", plain + b"ok")
    assert got[1:] == [b"ok", END] and last_head(got).raw == plain


async def test_oversized_head_is_431() -> None:
    s, _ = await side("request", b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + (1 << 17)))
    with pytest.raises(ProtocolError) as info:
        await events(s, 1)
    assert info.value.status == 431


async def test_raw_relay_passes_chunked_bytes_exactly() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Y: z\r\n\r\n5\r\nhello\r\n",
        b"6\r\n world\r\n0\r\n\r\n",
    )
    s, _ = await side("response", *raw)
    s.expect_response("GET")
    head = await s.next()
    assert isinstance(head, Head) and head.chunked
    a, b = socket.socketpair()
    _, out = await asyncio.open_connection(sock=a)
    await s.relay_raw(out, head.raw)  # type: ignore[arg-type]
    out.close()
    await out.wait_closed()
    got = b""
    b.settimeout(5)
    while chunk := b.recv(4096):
        got += chunk
    assert got == b"".join(raw) and s.complete


_SPLIT_REQUEST = b"POST /b HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\nhi"
_SPLIT_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


@pytest.mark.parametrize("back", range(1, 7))
@pytest.mark.parametrize(
    ("kind", "message"), [("request", _SPLIT_REQUEST), ("response", _SPLIT_RESPONSE)]
)
async def test_a_head_ends_where_its_blank_line_ends_whatever_the_reads(
    kind: str, message: bytes, back: int
) -> None:
    # The blank line cut between two reads at each of its bytes (and just before it):
    # the head's end is found across the seam, and the body is not taken for head.
    cut = len(message) - 2 - back
    s, peer = await side(kind, message[:cut])
    if kind == "response":
        s.expect_response("POST")
    head = asyncio.create_task(s.next())
    await asyncio.sleep(0.05)  # the first part is read alone
    assert not head.done()
    peer.write(message[cut:])
    got = await asyncio.wait_for(head, 5)
    assert isinstance(got, Head) and got.length == 2
    if kind == "request":  # the body is left raw, for relaying as framed
        assert s.unparsed == b"hi"
    else:
        assert got.raw == message[:-2]
