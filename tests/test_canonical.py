"""Requests read as the daemon reads them: the path and JSON rules alone, fast."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugstrip.adapters.policy.socket_proxy_env import policy_options
from plugstrip.proxy.canonical import BadRequest, canonical_path, fold, read_json
from plugstrip.proxy.docker_types import CONTAINER_CREATE, body_schema
from plugstrip.proxy.routes import Route


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/v1.41/containers/%63reate", "/v1.41/containers/create"),
        ("/v1.41/containers/json", "/v1.41/containers/json"),
        ("/containers/%2563/json", "/containers/%63/json"),  # decoded once, as Go does
        ("/images/a%3Ab/json", "/images/a:b/json"),
        ("/containers/json/", "/containers/json/"),
        ("/v1.41/containers/x.y/start", "/v1.41/containers/x.y/start"),
    ],
)
def test_paths_decoded_once(raw: str, path: str) -> None:
    assert canonical_path(raw) == path


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("/v1.41/containers%2Fcreate", "encoded '/'"),
        ("/v1.41/containers%2fcreate", "encoded '/'"),
        ("//containers/create", "doubled '/'"),
        ("/v1.41/./containers/create", "dot segment"),
        ("/v1.41/containers/..", "dot segment"),
        ("/v1.41/containers/%2E%2E/create", "dot segment"),
        ("/v1.41/%zz", "invalid percent-escape"),
        ("/v1.41/%ff", "not UTF-8"),
        ("http://docker/containers/create", "not a path"),
        ("*", "not a path"),
    ],
)
def test_paths_refused(raw: str, why: str) -> None:
    with pytest.raises(BadRequest, match=why):
        canonical_path(raw)


def test_go_folding_of_keys() -> None:
    assert fold("Bind\u017f") == fold("BINDS") == "binds"
    assert fold("Networ\u212aMode") == "networkmode"
    assert fold("\u0130mage") != "image"  # dotted capital I folds to nothing ASCII in Go


def test_docker_spelling_and_maps() -> None:
    body = (
        b'{"image":"x","hostconfig":{"PRIVILEGED":true,'
        b'"portbindings":{"80/tcp":[{"hostport":"8"}]}},"labels":{"a":"1","A":"2"}}'
    )
    out = read_json(body, CONTAINER_CREATE)
    assert out == {
        "Image": "x",
        "HostConfig": {"Privileged": True, "PortBindings": {"80/tcp": [{"HostPort": "8"}]}},
        "Labels": {"a": "1", "A": "2"},  # map keys are data: both kept, spelled as sent
    }


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"HostConfig":{},"hostconfig":{}}', "'hostconfig' twice, also as 'HostConfig'"),
        (b'{"HostConfig":{"Binds":[],"Bind\\u017f":[]}}', "'HostConfig.Bind\u017f' twice"),
        (b'{"Labels":{"a":"1","a":"2"}}', "'Labels.a' twice"),
        (b'{"HostConfig":{"Mounts":[{"Type":"a","TYPE":"b"}]}}', "Mounts[0]"),
        (b'{"a":1} {"b":2}', "not one JSON value"),
        (b'{"Image":"\xff"}', "not one JSON value"),
    ],
)
def test_ambiguous_bodies_refused(body: bytes, why: str) -> None:
    with pytest.raises(BadRequest) as refused:
        read_json(body, CONTAINER_CREATE)
    assert why in str(refused.value)


def test_unknown_shapes_compare_keys_as_go_would() -> None:
    with pytest.raises(BadRequest):
        read_json(b'{"x":{"Key":1,"key":2}}')  # no schema: fail closed
    assert read_json(b'{"x":{"Key":1,"other":2}}') == {"x": {"Key": 1, "other": 2}}


def test_schemas_by_route() -> None:
    assert body_schema("POST", "/v1.41/containers/create") is CONTAINER_CREATE
    assert body_schema("POST", "/containers/abc/exec") is not None
    assert body_schema("GET", "/containers/json") is None


@given(st.dictionaries(st.text(max_size=8), st.integers(), max_size=6))
def test_distinct_keys_round_trip(members: dict[str, int]) -> None:
    folded = {fold(k) for k in members}
    body = json.dumps(members).encode()
    if len(folded) < len(members):
        with pytest.raises(BadRequest):
            read_json(body)
    else:
        assert read_json(body) == members


def test_docker_socket_proxy_defaults_and_sections() -> None:
    routes = [Route.parse(r) for r in policy_options({})["allow"]]

    def allowed(method: str, path: str, opts: dict[str, str] | None = None) -> bool:
        rs = routes if opts is None else [Route.parse(r) for r in policy_options(opts)["allow"]]
        return any(r.matches(method, path) for r in rs)

    assert allowed("GET", "/_ping") and allowed("HEAD", "/v1.41/_ping")
    assert allowed("GET", "/v1.41/version") and allowed("GET", "/events")
    assert not allowed("GET", "/v1.41/containers/json")  # CONTAINERS=0 by default
    ro = {"CONTAINERS": "1"}
    assert allowed("GET", "/v1.41/containers/json", ro)
    assert not allowed("POST", "/v1.41/containers/create", ro)  # POST=0
    assert not allowed("POST", "/containers/x/start", {"ALLOW_START": "1"})  # needs POST
    start = {"POST": "1", "ALLOW_START": "1"}
    assert allowed("POST", "/containers/x/start", start)
    assert not allowed("POST", "/containers/x/stop", start)
    assert allowed("POST", "/containers/x/kill", {"POST": "1", "ALLOW_RESTARTS": "1"})
    assert allowed("DELETE", "/v1.41/images/x", {"POST": "1", "IMAGES": "1"})
    assert not allowed("GET", "/containersfoo", ro)  # a whole segment, not a prefix
    assert policy_options({"SERVICES": "1"})["services"] is True
    assert "privileged" not in policy_options({})  # the body checks' cautious defaults
    assert policy_options({}, body_checks=False)["privileged"] is True
