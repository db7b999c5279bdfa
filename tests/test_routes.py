"""Endpoint patterns: unit and property tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugstrip.proxy.contract import split_version
from plugstrip.proxy.routes import Route, RouteError

segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12)
segments = st.lists(segment, min_size=1, max_size=5)
version = st.sampled_from(["1.24", "1.41", "1.50", "2"])
method = st.sampled_from(["GET", "POST", "DELETE", "PUT", "HEAD"])


@pytest.mark.parametrize(
    ("pattern", "method", "path", "hit"),
    [
        ("POST /*/containers/create", "POST", "/v1.41/containers/create", True),
        ("POST /*/containers/create", "POST", "/containers/create", True),  # Powerstrip missed it
        ("POST /*/containers/create", "GET", "/v1.41/containers/create", False),
        ("POST /containers/create", "POST", "/v1.24/containers/create", True),
        ("POST /v1.41/containers/create", "POST", "/v1.41/containers/create", True),
        ("POST /v1.41/containers/create", "POST", "/v1.40/containers/create", False),
        ("POST /v1.41/containers/create", "POST", "/containers/create", False),
        ("POST /containers/*/start", "POST", "/v1.41/containers/abc123/start", True),
        ("POST /containers/*/start", "POST", "/containers/a/b/start", False),
        ("* /containers/**", "DELETE", "/v1.41/containers/abc", True),
        ("* /containers/**", "GET", "/containers", True),
        ("* /containers/**", "GET", "/containersx", False),
        ("* /**", "HEAD", "/_ping", True),
        ("* /**", "GET", "/", True),
        ("get /_ping", "GET", "/_ping", True),
        ("GET /*", "GET", "/_ping", True),  # one segment, not a version slot
        ("GET /images/*/json", "GET", "/images/busybox/json", True),
    ],
)
def test_matching(pattern: str, method: str, path: str, hit: bool) -> None:
    assert Route.parse(pattern).matches(method, path) is hit


@pytest.mark.parametrize("bad", ["", "POST", "FETCH /x", "POST x", "POST /x?y=1", "POST /a /b"])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(RouteError):
        Route.parse(bad)


@given(method, segments, st.none() | version)
def test_literal_pattern_matches_its_own_path_with_or_without_version(
    m: str, parts: list[str], v: str | None
) -> None:
    path = "/" + "/".join(parts)
    route = Route.parse(f"{m} /*{path}")
    request_path = f"/v{v}{path}" if v else path
    # a first segment that itself looks like a version is taken as the version
    if split_version(path)[0] is None:
        assert route.matches(m, request_path)


@given(method, segments, segments)
def test_literal_pattern_never_matches_a_different_path(m: str, a: list[str], b: list[str]) -> None:
    pa, pb = "/" + "/".join(a), "/" + "/".join(b)
    if split_version(pa)[0] is None and split_version(pb)[0] is None and pa != pb:
        assert not Route.parse(f"{m} {pa}").matches(m, pb)


@given(st.text(max_size=40))
def test_parse_never_crashes_on_junk(text: str) -> None:
    try:
        Route.parse(text)
    except RouteError:
        pass


@given(segments, version)
def test_split_version(parts: list[str], v: str) -> None:
    rest = "/" + "/".join(parts)
    got_version, got_rest = split_version(f"/v{v}{rest}")
    assert got_version == v and got_rest == rest
