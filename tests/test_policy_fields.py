"""The policy's field table against the Engine API's schema (proxy/engine_api.json, derived
from its swagger): every field of every request body, build parameter and filtered answer
has a class, every class names a check or a kind that exists, and the walk finds each
power and reference wherever the daemon reads it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import fields as dataclass_fields
from typing import Any

import pytest

from plugstrip.adapters.policy import fields as table
from plugstrip.adapters.policy.answers import COUNTERS, shows_others
from plugstrip.adapters.policy.fields import HOLDS, POWER, REF, walk
from plugstrip.adapters.policy.ownership import REFERENCES
from plugstrip.adapters.policy.powers import POWERS
from plugstrip.adapters.policy.rules import Rules
from plugstrip.proxy.canonical import read_json
from plugstrip.proxy.docker_types import API, answer_type, body_schema, body_type, served

pytestmark = pytest.mark.unit

Classified = dict[str, dict[str, Any]]


def _defs_in(kind: Any) -> Iterator[str]:
    if isinstance(kind, dict):
        if "def" in kind:
            yield kind["def"]
        for key in ("list", "map"):
            if key in kind:
                yield from _defs_in(kind[key])


def reachable(roots: dict[str, Any]) -> set[str]:
    """Every definition a body (or answer) of these routes can hold, embedded ones too."""
    seen: set[str] = set()
    todo = [name for kind in roots.values() for name in _defs_in(kind)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        entry = API["definitions"][name]
        todo += entry.get("embeds", [])
        todo += [d for kind in entry["fields"].values() for d in _defs_in(kind)]
    return seen


def unclassified(classified: Classified, roots: dict[str, Any]) -> list[str]:
    """Fields of the schema with no class: what a new API version adds unguarded."""
    return sorted(
        f"{name}.{field}"
        for name in reachable(roots)
        for field in API["definitions"][name]["fields"]
        if not classified.get(name, {}).get(field)
    )


def _requests_table() -> Classified:
    return {n: dict(f) for n, f in table.table("requests").items()}


def test_every_request_field_is_classified() -> None:
    assert unclassified(_requests_table(), API["requests"]) == []


@pytest.mark.parametrize("name", ["HostConfig", "EndpointSettings", "TaskSpec.ContainerSpec"])
def test_a_field_removed_from_the_table_fails_the_walk(name: str) -> None:
    classified = copy.deepcopy(_requests_table())
    field = next(iter(classified[name]))
    del classified[name][field]
    assert unclassified(classified, API["requests"]) == [f"{name}.{field}"]


def test_the_table_names_only_fields_the_schema_has() -> None:
    stale = [
        f"{name}.{field}"
        for name, classified in table.table("requests").items()
        for field in classified
        if field not in API["definitions"].get(name, {}).get("fields", {})
    ]
    assert stale == []


def test_every_build_parameter_is_classified() -> None:
    assert sorted(set(API["build_query"]) - set(table.build_table())) == []
    assert sorted(set(table.build_table()) - set(API["build_query"])) == []


def _all_classes() -> Iterator[tuple[str, table.Class]]:
    for name, classified in table.table("requests").items():
        for field, classes in classified.items():
            for cls in classes:
                yield f"{name}.{field}", cls
    for param, classes in table.build_table().items():
        for cls in classes:
            yield f"build.{param}", cls


def test_every_power_has_a_check_under_a_rule_and_every_reference_a_resolver() -> None:
    options = {f.name for f in dataclass_fields(Rules) if f.init}
    used_powers = {c.name for _, c in _all_classes() if c.tag == POWER}
    used_refs = {c.name for _, c in _all_classes() if c.tag == REF}
    assert sorted(used_powers - set(POWERS)) == []
    assert sorted(used_refs - set(REFERENCES)) == []
    assert sorted(set(POWERS) - used_powers) == []  # no check that no field reaches
    assert sorted(set(REFERENCES) - used_refs) == []
    assert sorted({p.rule for p in POWERS.values()} - options) == []


def test_nested_definitions_are_walked_or_refused_whole() -> None:
    """A field that holds a definition is walked into (holds) or is itself a power."""
    bad = []
    for name in reachable(API["requests"]):
        for field, kind in API["definitions"][name]["fields"].items():
            classes = table.classes_of(name, field)
            if any(True for _ in _defs_in(kind)):
                if not any(c.tag in (HOLDS, POWER) for c in classes):
                    bad.append(f"{name}.{field}")
            elif any(c.tag == HOLDS for c in classes):
                bad.append(f"{name}.{field} (holds, but no definition)")
    assert bad == []


# ---- the walk --------------------------------------------------------------------------


def _hits(route: str, text: str) -> set[tuple[str, str, str]]:
    method, path = route.split()
    body = read_json(text.encode(), body_schema(method, path))
    return {(h.tag, h.name, h.path) for h in walk(body_type(method, path), body)}


def test_the_walk_finds_host_fields_at_the_top_level_and_in_any_spelling() -> None:
    hits = _hits(
        "POST /containers/create",
        '{"image":"x","privileged":true,"hostconfig":{"cgroupparent":"/","LINKS":["a:b"]},'
        '"NetworkingConfig":{"EndpointsConfig":{"net":{"links":["c"]}}}}',
    )
    assert {
        ("ref", "image", "Image"),
        ("power", "privileged", "Privileged"),
        ("power", "cgroup_parent", "HostConfig.CgroupParent"),
        ("ref", "container_links", "HostConfig.Links"),
        ("ref", "network_keys", "NetworkingConfig.EndpointsConfig"),
        ("ref", "container_links", "NetworkingConfig.EndpointsConfig[net].Links"),
    } <= hits


def test_the_walk_names_unknown_keys_and_skips_nulls() -> None:
    hits = _hits(
        "POST /containers/create",
        '{"HostConfig":{"Privileged":null,"NotAField":1},"AlsoNot":{"x":1}}',
    )
    assert hits == {
        ("unknown", "NotAField", "HostConfig.NotAField"),
        ("unknown", "AlsoNot", "AlsoNot"),
    }


def test_the_walk_reaches_services_mounts_and_secrets() -> None:
    hits = _hits(
        "POST /services/create",
        '{"TaskTemplate":{"ContainerSpec":{"Mounts":[{"Type":"bind","Source":"/etc"}],'
        '"Secrets":[{"SecretName":"s"}],"CapabilityAdd":["SYS_ADMIN"]},'
        '"Networks":[{"Target":"host"}]}}',
    )
    assert {
        ("power", "mount_source", "TaskTemplate.ContainerSpec.Mounts[0].Source"),
        ("ref", "secret", "TaskTemplate.ContainerSpec.Secrets[0].SecretName"),
        ("power", "caps", "TaskTemplate.ContainerSpec.CapabilityAdd"),
        ("power", "service_network", "TaskTemplate.Networks[0].Target"),
    } <= hits


# ---- answers ---------------------------------------------------------------------------


def test_every_answer_field_is_classified() -> None:
    classified = {n: dict(f) for n, f in table.table("answers").items()}
    assert unclassified(classified, API["answers"]) == []


def test_an_answer_field_removed_from_the_table_fails_the_walk() -> None:
    classified = {n: dict(f) for n, f in table.table("answers").items()}
    del classified["Network"]["Containers"]
    assert unclassified(classified, API["answers"]) == ["Network.Containers"]


def test_answer_classes_have_their_filters() -> None:
    kinds = {"container", "volume", "service"}  # what answers.Owned tells apart
    for name, classified in table.table("answers").items():
        for field, classes in classified.items():
            for cls in classes:
                assert cls.tag in ("harmless", "holds", "names", "counts", "belongs"), cls
                if cls.tag == "counts":
                    assert f"{name}.{field}" in COUNTERS
                if cls.tag in ("names", "belongs"):
                    assert cls.name in kinds, (name, field, cls)
    used = {
        f"{n}.{f}"
        for n, c in table.table("answers").items()
        for f, cs in c.items()
        if any(x.tag == "counts" for x in cs)
    }
    assert set(COUNTERS) == used


def test_which_answers_can_show_others() -> None:
    for path in ("/networks/x", "/networks", "/networks/", "/system/df", "/v1.41/tasks"):
        assert shows_others(answer_type("GET", path)), path
    assert not shows_others(answer_type("GET", "/containers/x/json"))
    assert not shows_others(answer_type("GET", "/plugins"))


def test_every_route_the_router_serves_is_found_as_it_matches() -> None:
    """A path made from each route (a parameter that takes slashes given some) is served
    by that route or by one the router tries first, with the parameters it matched."""
    order = list(API["routes"])
    for route in order:
        method, path = route.split()
        example = re.sub(r"\{[^}:]*\}", "one", path)
        example = re.sub(r"\{[^}]*:[^}]*\}", "with/slash", example)
        found = served(method, f"/v1.41{example}")
        assert found is not None, route
        assert order.index(found.route) <= order.index(route), (route, found)
        if found.route == route:
            assert len(found.params) == path.count("{"), found
    assert served("GET", "/networks/").handler == served("GET", "/networks").handler
    assert served("GET", "/images/library/busybox/json").params == ("library/busybox",)
    assert served("GET", "/containers/x/nope") is None
