"""Where a chunked body ends (proxy/chunked.py), checked against llhttp, the parser
plugstrip used to decode bodies with: whatever framing it takes, llhttp ends the message
at the same byte, so the two never disagree about where the next request begins."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugstrip.proxy.chunked import BadChunking, ChunkedEnd

pytestmark = pytest.mark.unit

HEAD = b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT = b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n"


class _Ends:
    def __init__(self) -> None:
        self.complete = False

    def on_message_complete(self) -> None:
        self.complete = True


def llhttp_end(body: bytes) -> int | None:
    """Where llhttp ends the message whose head is HEAD and whose body starts ``body``;
    None if it finds an error first or needs more."""
    seen = _Ends()
    parser = httptools.HttpRequestParser(seen)
    parser.feed_data(HEAD)
    for i in range(len(body)):
        try:
            parser.feed_data(body[i : i + 1])
        except httptools.HttpParserError:
            return None
        if seen.complete:
            return i + 1
    return None


def our_end(data: bytes, cuts: list[int]) -> int | None:
    """ChunkedEnd's verdict on ``data`` fed in pieces cut at ``cuts``; None if it refuses
    the framing or wants more."""
    end_of = ChunkedEnd()
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        piece = data[start:cut]
        try:
            end = end_of.feed(piece, len(piece))
        except BadChunking:
            return None
        if end is not None:
            return start + end
        start = cut
    return None


chunk_data = st.binary(min_size=1, max_size=40)
extension = st.sampled_from([b"", b";a", b";name=value", b';q="x y"', b";a;b=1"])
trailer = st.sampled_from([b"", b"X-Sum: 1\r\n", b"A: b\r\nC: d\r\n"])


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    parts = [b"%x%s\r\n%s\r\n" % (len(d), draw(extension), d) for d in draw(st.lists(chunk_data))]
    return b"".join(parts) + b"0" + draw(extension) + b"\r\n" + draw(trailer) + b"\r\n"


@given(chunked_bodies(), st.lists(st.integers(min_value=0, max_value=400)))
def test_a_canonical_body_ends_where_llhttp_ends_it_however_it_is_cut(
    body: bytes, cuts: list[int]
) -> None:
    data = body + NEXT
    assert our_end(data, [c for c in cuts if c <= len(data)]) == len(body)
    assert llhttp_end(data) == len(body)


@given(chunked_bodies(), st.data())
def test_no_mangled_body_is_taken_with_an_end_llhttp_does_not_share(
    body: bytes, data: st.DataObject
) -> None:
    raw = bytearray(body + NEXT)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        how = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = data.draw(st.sampled_from(b"\r\n \t;=0aAfFgG:\x00\x7f"))
        if how == "replace":
            raw[at] = byte
        elif how == "insert":
            raw.insert(at, byte)
        else:
            del raw[at]
    ours = our_end(bytes(raw), [])
    if ours is not None:
        assert llhttp_end(bytes(raw)) == ours, bytes(raw)


@pytest.mark.parametrize(
    "body",
    [
        b"3\nabc\r\n0\r\n\r\n",  # a bare LF ends the size line (Go reads it, llhttp not)
        b"3 \r\nabc\r\n0\r\n\r\n",  # a space after the size (Go trims it)
        b"0x3\r\nabc\r\n0\r\n\r\n",
        b"3\r\nabcX\r\n0\r\n\r\n",  # no CRLF after the data
        b"3\r\nabc\r\n0\r\nX: a\rb\r\n\r\n",  # a bare CR in a trailer
        b"1" * 16 + b"\r\n",  # a size past 2**60
        b"3;\r\nabc\r\n0\r\n\r\n",  # an empty extension
        b"3" + b";" + b"a" * 5000 + b"\r\n",  # a size line longer than Go takes
        b"0\r\n" + b"X: " + b"a" * 5000 + b"\r\n\r\n",  # a trailer longer than Go takes
    ],
    ids=[
        "bare-lf",
        "space",
        "0x",
        "no-crlf",
        "bare-cr-trailer",
        "huge-size",
        "empty-ext",
        "long-line",
        "long-trailer",
    ],
)
def test_framing_go_might_read_differently_is_refused(body: bytes) -> None:
    with pytest.raises(BadChunking):
        ChunkedEnd().feed(body, len(body))


def test_only_the_given_size_of_a_reused_buffer_is_read() -> None:
    buf = bytearray(b"0\r\n\r\n" + b"\0" * 10)
    end_of = ChunkedEnd()
    assert end_of.feed(buf, 3) is None  # "0\r\n": the trailer section is still to come
    buf[:2] = b"\r\nstale"[:2]
    assert end_of.feed(buf, 2) == 2
