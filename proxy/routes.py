"""Endpoint patterns: ``"POST /*/containers/create"`` matched against a request.

The API version prefix is optional on both sides: Powerstrip's ``/*/containers/create``
(its ``*`` stood for the version) matches ``/v1.41/containers/create`` and, unlike
Powerstrip, the unversioned ``/containers/create`` too. A pattern may pin a version
(``/v1.41/...``), which then only matches requests with that version. In the rest of the
path ``*`` matches one segment (or part of one) and ``**`` any number of segments; what
each ``*`` matched is handed back by :meth:`Route.match_split` (a name or an id). The query is
ignored. The method is exact (case-insensitive) or ``*``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from plugstrip.proxy.contract import same_version, split_version

_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "*"}
_VERSION_SLOT = re.compile(r"^/(\*|v\d+(?:\.\d+)?)(?=/|$)")


class RouteError(ValueError):
    pass


@dataclass(frozen=True)
class Route:
    text: str
    method: str
    version: str | None  # None: any version or none
    path: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> Route:
        parts = text.split()
        if len(parts) != 2:
            raise RouteError(f"endpoint {text!r}: expected 'METHOD /path'")
        method, path = parts[0].upper(), parts[1]
        if method not in _METHODS:
            raise RouteError(f"endpoint {text!r}: unknown method {parts[0]!r}")
        if not path.startswith("/") or "?" in path:
            raise RouteError(f"endpoint {text!r}: path must start with '/' and have no query")
        version: str | None = None
        slot = _VERSION_SLOT.match(path)
        if slot is not None and path[slot.end() :]:
            version = None if slot.group(1) == "*" else slot.group(1)[1:]
            path = path[slot.end() :]
        return cls(text, method, version, re.compile(_glob_to_regex(path)))

    def matches(self, method: str, path: str) -> bool:
        if self.method != "*" and self.method != method.upper():
            return False  # before the path is split: most routes a call meets end here
        return self._rest(*split_version(path)) is not None

    def match_split(self, method: str, version: str | None, rest: str) -> tuple[str, ...] | None:
        """What each ``*`` matched, in order, if the call matches; else None. For a table
        of routes tried against one call: the path split once (``split_version``), the
        method upper-case."""
        if self.method != "*" and self.method != method:
            return None
        found = self._rest(version, rest)
        return None if found is None else found.groups()

    def _rest(self, version: str | None, rest: str) -> re.Match[str] | None:
        if self.version is not None and (
            version is None or not same_version(version, self.version)
        ):
            return None
        return self.path.fullmatch(rest)


def _glob_to_regex(path: str) -> str:
    out = []
    for token in re.split(r"(\*\*|\*)", path):
        if token == "**":
            out.append(".*")
        elif token == "*":
            out.append("([^/]+)")
        else:
            out.append(re.escape(token))
    regex = "".join(out)
    # "/containers/**" should also match "/containers" itself
    return regex[: -len("/.*")] + "(?:/.*)?" if regex.endswith("/.*") else regex
