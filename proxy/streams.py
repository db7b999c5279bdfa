"""Which responses are streams, so post-hooks must not hold them whole.

A response is held for post-hooks only when it is JSON and not one of the JSON streams
below (progress of pull/push/build/load, events, live stats), nor ``wait``: the daemon sends
its head at once and its body when the container exits, and ``docker run`` waits for that
head before it starts the container, so holding it would deadlock the run. Everything that
is not JSON (logs, tar archives, raw attach streams) is streamed anyway.
"""

from __future__ import annotations

import functools

from plugstrip.proxy.routes import Route

_JSON_STREAMS = tuple(
    Route.parse(p)
    for p in (
        "GET /events",
        "GET /containers/*/stats",
        "POST /containers/*/wait",
        "POST /build",
        "POST /images/create",
        "POST /images/**/push",
        "POST /images/load",
        "POST /plugins/pull",
        "POST /plugins/*/upgrade",
        "POST /plugins/*/push",
    )
)
_HIJACKS = tuple(
    Route.parse(p)
    for p in ("POST /containers/*/attach", "POST /exec/*/start", "POST /session", "POST /grpc")
)
RAW_STREAM_TYPES = (
    "application/vnd.docker.raw-stream",
    "application/vnd.docker.multiplexed-stream",
)


def is_json_stream(method: str, path: str, query: str) -> bool:
    if not any(r.matches(method, path) for r in _JSON_STREAMS):
        return False
    if path.endswith("/stats"):
        params = dict(p.partition("=")[::2] for p in query.split("&"))
        return params.get("stream", "1").lower() not in ("0", "false")
    return True


def may_hijack(method: str, path: str, upgrade: bool) -> bool:
    """Attach, exec start, session and grpc hijack the connection, with or without Upgrade."""
    return upgrade or _hijacks(method, path)


@functools.lru_cache(maxsize=4096)  # asked on every call: pollers repeat theirs
def _hijacks(method: str, path: str) -> bool:
    return any(r.matches(method, path) for r in _HIJACKS)
