"""Where a chunked body ends, found without decoding it, so the body can be relayed as the
bytes that came.

Only the framing is read: a size line per chunk, a jump over its data, then the trailer
section; the cost is per chunk, not per byte. A body is taken only if its framing is
canonical (RFC 9112 §7.1): hex sizes, extensions and trailer fields as the grammar has
them (no optional whitespace), every line ended by CRLF and no other CR or LF. The
daemon's parser (Go's net/http) accepts all of that and ends each line at its LF, so both
agree on where the body ends: no request can be smuggled in a body's tail. What Go reads
more leniently (bare LF, spaces after the size) is refused here; tests/test_chunked.py
checks every framing taken against llhttp's verdict.
"""

from __future__ import annotations

import re
from typing import Protocol

# Go's net/http refuses a chunk line of 4096 bytes or more, and a trailer that does not end
# within its 4 KiB read buffer.
MAX_LINE = 4095
MAX_TRAILER = 4096
# A size and its extensions (RFC 9112 §7.1.1), without the optional whitespace: names and
# values are tokens, or quoted strings of visible characters (RFC 9110 §5.6).
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'
_FIELD_LINE = re.compile(rb"%s:[\t -~]*" % _TOKEN)
_SIZE_LINE = re.compile(rb"([0-9a-fA-F]{1,15})(?:;%s(?:=(?:%s|%s))?)*" % (_TOKEN, _TOKEN, _QUOTED))


class BadChunking(ValueError):
    pass


class BodyEnd(Protocol):
    def feed(self, data: bytes | bytearray, size: int) -> int | None: ...


class LengthEnd:
    """A body of a known length: never read past it."""

    def __init__(self, length: int) -> None:
        self.left = length

    def feed(self, data: bytes | bytearray, size: int) -> int | None:
        take = min(self.left, size)
        self.left -= take
        return None if self.left else take


class ChunkedEnd:
    """Fed a chunked body's bytes in order; says where the body ends."""

    def __init__(self) -> None:
        self._line = bytearray()  # a size or trailer line, until its LF
        self._data = 0  # chunk data still to skip
        self._crlf = 0  # bytes of the CRLF after chunk data still due
        self._trailer = -1  # bytes of trailer seen, once the last chunk came (else -1)

    def feed(self, data: bytes | bytearray, size: int) -> int | None:
        """The offset just past the body's end in ``data[:size]``, or None if the body
        goes on past it. Raises BadChunking on framing that is not canonical."""
        pos = 0
        while pos < size:
            if self._data:
                step = min(self._data, size - pos)
                self._data -= step
                pos += step
                continue
            if self._crlf:
                expected = b"\r\n"[2 - self._crlf :]
                got = bytes(data[pos : min(pos + len(expected), size)])
                if not expected.startswith(got):
                    raise BadChunking("no CRLF after chunk data")
                self._crlf -= len(got)
                pos += len(got)
                continue
            lf = data.find(b"\n", pos, size)
            end = size if lf < 0 else lf + 1
            self._line += data[pos:end]
            pos = end
            limit = MAX_LINE if self._trailer < 0 else MAX_TRAILER - self._trailer
            if len(self._line) > limit:
                raise BadChunking("line too long")
            if lf < 0:
                break
            line = bytes(self._line)
            self._line.clear()
            if self._line_done(line):
                return pos
        return None

    def _line_done(self, line: bytes) -> bool:
        """Take one whole line (LF included); True if it ended the body."""
        text = line[:-2]
        if not line.endswith(b"\r\n") or b"\r" in text:
            raise BadChunking("a line not ended by CRLF")
        if self._trailer >= 0:  # the trailer section, ended by an empty line
            self._trailer += len(line)
            if text and _FIELD_LINE.fullmatch(text) is None:
                raise BadChunking("bad trailer field")
            return not text
        size = _SIZE_LINE.fullmatch(text)
        if size is None:
            raise BadChunking("bad chunk size or extension")
        self._data = int(size[1], 16)
        if self._data:
            self._crlf = 2
        else:
            self._trailer = 0
        return False
