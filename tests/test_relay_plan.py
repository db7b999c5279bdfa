"""The relay decision, case by case: a pure function of the request and the answer's
head (the byte path that carries it out is tests/test_byte_path.py)."""

from __future__ import annotations

import pytest

from plugstrip.proxy.contract import Headers, HttpRequest
from plugstrip.proxy.http1 import Head
from plugstrip.proxy.relay_plan import RelayPlan, relay_plan
from plugstrip.proxy.streams import may_hijack

RAW = "application/vnd.docker.raw-stream"
JSON = "application/json"


def request(method: str, path: str, query: str = "", upgrade: bool = False) -> HttpRequest:
    headers = Headers([("Host", "docker"), *([("Upgrade", "tcp")] if upgrade else [])])
    return HttpRequest(method, path, query, headers)


def head(status: int, length: int | None = 0, chunked: bool = False, keep: bool = True) -> Head:
    return Head([], "1.1", keep, False, status=status, length=length, chunked=chunked)


ATTACH = "/v1.41/containers/c1/attach"
CASES = [
    # (request, answer head, content type, post-hooks) -> plan
    (request("GET", "/v1.41/info"), head(200, 2), JSON, False, RelayPlan()),
    (request("GET", "/v1.41/info"), head(200, 2), JSON, True, RelayPlan(hold=True)),
    (
        request("GET", "/v1.41/info"),
        head(200, 2, keep=False),
        JSON,
        True,
        RelayPlan(hold=True, keep_alive=False),
    ),
    (request("HEAD", "/v1.41/info"), head(200, 2), JSON, True, RelayPlan()),  # no body
    (
        request("GET", "/v1.41/containers/c1/logs"),
        head(200, None, True),
        "text/plain",
        True,
        RelayPlan(),
    ),
    (
        request("GET", "/v1.41/events"),
        head(200, None, True),
        JSON,
        True,
        RelayPlan(),
    ),  # a JSON stream
    (
        request("GET", "/v1.41/containers/c1/stats", "stream=0"),
        head(200, 9),
        JSON,
        True,
        RelayPlan(hold=True),
    ),
    (request("GET", "/v1.41/containers/c1/stats"), head(200, None, True), JSON, True, RelayPlan()),
    (
        request("POST", ATTACH, upgrade=True),
        head(101, None),
        RAW,
        True,
        RelayPlan(pipe=True, keep_alive=False),
    ),
    (
        request("POST", ATTACH),
        head(200, None),
        RAW,
        True,
        RelayPlan(pipe=True, legacy=True, keep_alive=False),
    ),
    (request("POST", ATTACH), head(200, 5), RAW, False, RelayPlan()),  # framed: not a hijack
    (request("POST", ATTACH), head(200, None, True), RAW, False, RelayPlan()),
    (
        request("POST", "/v1.41/exec/e1/start"),
        head(200, None),
        RAW,
        False,
        RelayPlan(pipe=True, legacy=True, keep_alive=False),
    ),
    (
        request("GET", "/v1.41/containers/c1/logs"),
        head(200, None),
        RAW,
        False,
        RelayPlan(),
    ),  # not a hijack route
    (request("POST", ATTACH), head(404, 20), JSON, True, RelayPlan(hold=True)),  # refused
]


@pytest.mark.parametrize(("req", "answer", "content_type", "post_hooks", "expected"), CASES)
def test_relay_plan(
    req: HttpRequest, answer: Head, content_type: str, post_hooks: bool, expected: RelayPlan
) -> None:
    hijackable = may_hijack(req.method, req.path, "Upgrade" in req.headers)
    assert relay_plan(req, answer, content_type, post_hooks, hijackable) == expected
