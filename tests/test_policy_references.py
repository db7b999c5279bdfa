"""Ownership from the outside, by class: every reference a body makes to another client's
object answers as if the object were absent, by name, id and id prefix; every answer that
embeds objects shows the client only its own.

Two uids run the unchanged docker CLI on one shared socket (tests/test_policy_clients.py's
setup). What is refused is compared with the same command naming an object that does not
exist, and the daemon, asked directly, shows that nothing was made.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugstrip.proxy.docker_types import API
from tests.harness import Plugstrip, docker
from tests.test_policy_clients import as_uid, shared

__all__ = ["shared"]  # the fixture, used here by name

RUN = uuid.uuid4().hex[:6]
SECRET = f"s3cret-{RUN}"


@pytest.fixture(scope="module")
def a_objects(shared: tuple[Plugstrip, Path], dockerd: str) -> Iterator[dict[str, str]]:
    """What client A (uid 1001) made: a running container with a secret in its
    environment, on A's network and with A's volume, and one on the predefined none."""
    _, root = shared
    a = as_uid(root, 1001)
    a("network", "create", f"anet-{RUN}")
    a("volume", "create", f"avol-{RUN}")
    a(
        *("run", "-d", "--name", f"actr-{RUN}", "--network", f"anet-{RUN}"),
        *("-e", f"SECRET={SECRET}", "-v", f"avol-{RUN}:/data", "busybox", "sleep", "300"),
    )
    a("run", "-d", "--name", f"anone-{RUN}", "--network", "none", "busybox", "sleep", "300")
    b = as_uid(root, 1002)
    b("network", "create", f"bnet-{RUN}")
    b("volume", "create", f"bvol-{RUN}")
    b("run", "-d", "--name", f"bctr-{RUN}", "busybox", "sleep", "300")
    ids = {
        "ctr": _id(dockerd, "container", f"actr-{RUN}"),
        "none": _id(dockerd, "container", f"anone-{RUN}"),
        "net": _id(dockerd, "network", f"anet-{RUN}"),
    }
    try:
        yield ids
    finally:
        docker(dockerd, "rm", "-f", f"actr-{RUN}", f"anone-{RUN}", f"bctr-{RUN}", check=False)
        docker(dockerd, "network", "rm", f"anet-{RUN}", f"bnet-{RUN}", check=False)
        docker(dockerd, "volume", "rm", "-f", f"avol-{RUN}", f"bvol-{RUN}", check=False)


def _id(dockerd: str, kind: str, name: str) -> str:
    return docker(dockerd, kind, "inspect", "-f", "{{.Id}}", name).stdout.decode().strip()


def _state(dockerd: str) -> tuple[str, str, str]:
    return tuple(  # type: ignore[return-value]
        docker(dockerd, *args).stdout.decode()
        for args in (("ps", "-aq", "--no-trunc"), ("volume", "ls", "-q"), ("network", "ls", "-q"))
    )


# A reference, written with REF where the other client's object goes; the same command
# with an absent name must fail the same way (or, where the daemon takes an absent one at
# create, plugstrip must still refuse).
CONTAINER_REFS = [
    ("create", "--link", "REF:x", "busybox", "true"),
    ("create", "--volumes-from", "REF", "busybox", "true"),
    ("create", "--volumes-from", "REF:ro", "busybox", "true"),
    ("create", "--pid", "container:REF", "busybox", "true"),
    ("create", "--ipc", "container:REF", "busybox", "true"),
    ("create", "--network", "container:REF", "busybox", "true"),
    ("create", "--network", "bnet-RUN", "--link", "REF:x", "busybox", "true"),
    ("network", "connect", "bnet-RUN", "REF"),
    ("network", "disconnect", "anet-RUN", "REF"),
    ("exec", "REF", "env"),
    ("cp", "REF:/etc/hostname", "-"),
    ("commit", "REF"),
]
NETWORK_REFS = [
    ("create", "--network", "REF", "busybox", "true"),
    ("network", "connect", "REF", "b-RUN"),
    ("network", "inspect", "REF"),
]
VOLUME_REFS = [
    ("create", "-v", "REF:/x", "busybox", "true"),
    ("create", "--mount", "type=volume,src=REF,dst=/x", "busybox", "true"),
]


def _refs(ids: dict[str, str], kind: str) -> list[str]:
    """The names the daemon resolves to an object: its name, id and a prefix of its id."""
    if kind == "volume":
        return [f"avol-{RUN}"]
    full = ids["ctr" if kind == "container" else "net"]
    name = f"actr-{RUN}" if kind == "container" else f"anet-{RUN}"
    return [name, full, full[:12]]


@pytest.mark.parametrize(
    "kind, args",
    [("container", a) for a in CONTAINER_REFS]
    + [("network", a) for a in NETWORK_REFS]
    + [("volume", a) for a in VOLUME_REFS],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_a_reference_to_anothers_object_is_as_if_absent(
    kind: str,
    args: tuple[str, ...],
    shared: tuple[Plugstrip, Path],
    a_objects: dict[str, str],
    dockerd: str,
) -> None:
    _, root = shared
    b = as_uid(root, 1002)
    b("create", "--name", f"b-{RUN}", "--network", "none", "busybox", "true", check=False)
    for ref in _refs(a_objects, kind):
        before = _state(dockerd)
        out = b(*(x.replace("REF", ref).replace("RUN", RUN) for x in args), check=False)
        assert out.returncode != 0, (ref, out.stdout)
        assert SECRET.encode() not in out.stdout + out.stderr
        assert _state(dockerd) == before, ref  # nothing made, nothing removed
        absent = b(*(x.replace("REF", f"gone{RUN}").replace("RUN", RUN) for x in args), check=False)
        if absent.returncode != 0 and kind != "volume":
            assert out.stderr == absent.stderr.replace(f"gone{RUN}".encode(), ref.encode()), (
                out.stderr,
                absent.stderr,
            )
        _remove_made_by(dockerd, before)


def _remove_made_by(dockerd: str, before: tuple[str, str, str]) -> None:
    """What the absent-name runs made (the daemon takes some at create)."""
    made = set(_state(dockerd)[0].split()) - set(before[0].split())
    if made:
        docker(dockerd, "rm", "-f", *made, check=False)
    volumes = set(_state(dockerd)[1].split()) - set(before[1].split())
    if volumes:
        docker(dockerd, "volume", "rm", "-f", *volumes, check=False)


def test_the_owner_itself_may_use_every_reference(
    shared: tuple[Plugstrip, Path], a_objects: dict[str, str], dockerd: str
) -> None:
    """The same references by the owner pass: the refusals above are about ownership."""
    _, root = shared
    a = as_uid(root, 1001)
    a("run", "--rm", "--link", f"actr-{RUN}:x", "--network", f"anet-{RUN}", "busybox", "true")
    a("run", "--rm", "--volumes-from", a_objects["ctr"][:12], "busybox", "ls", "/data")
    a("run", "--rm", "-v", f"avol-{RUN}:/x", "busybox", "true")


def _as_raw(root: Path, uid: int, path: str) -> bytes:
    """An answer's raw bytes, as ``uid`` gets them on the shared socket."""
    return subprocess.run(
        ["curl", "-s", "--unix-socket", f"{root}/shared.sock", f"http://docker{path}"],
        capture_output=True,
        user=uid,
        group=uid,
        timeout=30,
        check=True,
    ).stdout


# Every GET the daemon's router serves (proxy/engine_api.json's routes), its parameters
# filled with B's own objects and the shared ones: a new route is in the test by itself.
NOT_ASKED = {
    "GET /images/search": "asks a registry: traffic off this host",
    "GET /distribution/{name:.*}/json": "asks a registry: traffic off this host",
    "GET /plugins/privileges": "asks a registry: traffic off this host",
    "GET /containers/{name:.*}/attach/ws": "a websocket of B's own container's streams",
    "GET /pprof/profile": "the daemon's own profile (30 s of its CPU), no objects",
    "GET /pprof/trace": "the daemon's own trace, no objects",
}
PARAMS = {
    "containers": [f"bctr-{RUN}"],
    "networks": ["none", "host", "bridge", f"bnet-{RUN}"],
    "volumes": [f"bvol-{RUN}"],
    "images": ["busybox"],
}
QUERY = "?all=1&stream=0&stdout=1&stderr=1&until=0&path=/etc/hostname"


def _answer_paths() -> list[str]:
    paths = []
    for route in API["routes"]:
        method, path = route.split()
        if method != "GET" or route in NOT_ASKED:
            continue
        values = PARAMS.get(path.split("/")[1], ["absent"]) if "{" in path else [""]
        paths += [re.sub(r"\{[^}]*\}", value, path) + QUERY for value in values]
    return paths


@pytest.mark.parametrize("path", _answer_paths())
def test_no_answer_shows_anothers_objects(
    path: str, shared: tuple[Plugstrip, Path], a_objects: dict[str, str]
) -> None:
    """Not an id, a name or an address of A's objects in any byte B gets."""
    _, root = shared
    seen_by_b = _as_raw(root, 1002, "/v1.41" + path)
    assert not [s for s in _secrets(a_objects) if s.encode() in seen_by_b], seen_by_b[:2000]


def test_the_daemon_shows_anothers_objects_where_b_is_cut(
    shared: tuple[Plugstrip, Path], a_objects: dict[str, str]
) -> None:
    """So the test above can fail: unfiltered, these answers have A's objects."""
    _, root = shared
    for path in ("/networks/none", "/networks/", "/system/df", "/containers/json?all=1"):
        seen_by_root = _as_raw(root, 0, "/v1.41" + path)
        assert [s for s in _secrets(a_objects) if s.encode() in seen_by_root], path


def _secrets(a_objects: dict[str, str]) -> list[str]:
    return [
        *(a_objects["ctr"][:12], a_objects["none"][:12], f"actr-{RUN}", f"anone-{RUN}"),
        *(f"avol-{RUN}", f"anet-{RUN}", a_objects["net"][:12]),
    ]


def test_counts_are_of_the_clients_own(
    shared: tuple[Plugstrip, Path], a_objects: dict[str, str]
) -> None:
    _, root = shared
    df = json.loads(_as_raw(root, 1002, "/v1.41/system/df"))
    mine = json.loads(_as_raw(root, 1002, "/v1.41/containers/json?all=1"))
    everyone = json.loads(_as_raw(root, 0, "/v1.41/system/df"))
    for image in df["Images"]:
        using = [c for c in mine if c["ImageID"] == image["Id"]]
        assert image["Containers"] == len(using), image
    assert sum(i["Containers"] for i in everyone["Images"]) > sum(
        i["Containers"] for i in df["Images"]
    )
    a_df = json.loads(_as_raw(root, 1001, "/v1.41/system/df"))
    [vol] = [v for v in a_df["Volumes"] if v["Name"] == f"avol-{RUN}"]
    assert vol["UsageData"]["RefCount"] == 1  # actr, A's own, uses it
