"""The hook contract: headers, JSON bodies edited in place, exact numbers."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from plugstrip.proxy.contract import Headers, HttpRequest, dumps, loads


def test_headers_keep_order_and_case_and_match_any_case() -> None:
    h = Headers([("Host", "docker"), ("X-A", "1"), ("x-a", "2"), ("Content-Length", "3")])
    assert h.get("x-A") == "1" and h.get_all("X-A") == ["1", "2"]
    h.set("X-a", "9")
    assert list(h) == [("Host", "docker"), ("X-A", "9"), ("Content-Length", "3")]
    h.remove("content-length")
    h.set("New", "v")
    assert list(h) == [("Host", "docker"), ("X-A", "9"), ("New", "v")]


def test_unchanged_body_keeps_its_bytes() -> None:
    raw = b'{ "b": 1.50, "a": [1e3, 12345678901234567890123] }'
    req = HttpRequest("POST", "/containers/create", body=raw)
    assert req.json()["b"] == Decimal("1.50")
    req.settle()
    assert req.body == raw  # read but not changed: forwarded exactly as received


def test_in_place_edit_keeps_key_order_unknown_fields_and_exact_numbers() -> None:
    raw = (
        b'{"Zed":1,"Image":"busybox","Nano":0.1000000000000000055511151231257827,'
        b'"Big":18446744073709551617,"Unknown":{"x":[1.0,2.50]}}'
    )
    req = HttpRequest("POST", "/containers/create", body=raw)
    req.json()["Image"] = "alpine"
    req.settle()
    assert req.body == raw.replace(b"busybox", b"alpine")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.decimals(allow_nan=False, allow_infinity=False, places=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_round_trip_is_exact(value: object) -> None:
    assert loads(dumps(value)) == value


def test_target_splits_query() -> None:
    req = HttpRequest("GET", "/x")
    req.target = "/v1.41/containers/json?all=1&size=0"
    assert (req.path, req.query, req.target) == (
        "/v1.41/containers/json",
        "all=1&size=0",
        "/v1.41/containers/json?all=1&size=0",
    )
