"""Learn mode from the outside: ``plugstrip policy learn`` in front of the test daemon, two
uids running the unchanged docker CLI on one socket; the configuration it prints, served,
lets each do again what it did and nothing else; ``plugstrip policy check`` replays the
record against a rule set and names what that set would refuse."""

from __future__ import annotations

import copy
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import PLUGSTRIP, Plugstrip, start_plugstrip, wait_for
from tests.test_policy_clients import as_uid


def _serve(dockerd: str, root: Path, command: tuple[str, ...], extra: list[str]) -> Plugstrip:
    sock = root / "shared.sock"
    ps = start_plugstrip(
        dockerd,
        root / "ps",
        extra=["--listen", f"unix://{sock}", "--no-networks", *extra],
        command=command,
    )
    wait_for(sock.exists, 20, "no shared socket")
    sock.chmod(0o666)
    return ps


def _what_1001_does(data: Path) -> list[tuple[str, ...]]:
    return [
        ("run", "--rm", "--cap-add", "NET_ADMIN", "-v", f"{data}:/d", "busybox", "touch", "/d/x"),
        ("ps", "-a"),
    ]


@pytest.fixture(scope="module")
def learned(dockerd: str) -> Iterator[tuple[dict[str, Any], Path, Path, Path]]:
    """What learn mode printed after uid 1001 ran a container with a capability and a bind
    mount and listed containers, and uid 1002 only listed them."""
    root = Path(tempfile.mkdtemp(prefix="ps-learn-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    record, out = root / "calls.jsonl", root / "learned.yml"
    ps = _serve(dockerd, root, ("policy", "learn"), ["--record", str(record), "--out", str(out)])
    try:
        for args in _what_1001_does(data):
            as_uid(root, 1001)(*args)
        as_uid(root, 1002)("ps")
        assert (data / "x").exists()  # nothing was refused while learning
    finally:
        assert ps.stop(signal.SIGINT) == 0, ps.log.read_text()
    try:
        yield yaml.safe_load(out.read_text()), data, record, out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _rules(config: dict[str, Any], uid: int) -> dict[str, Any]:
    clients = config["adapters"]["policy"]["options"]["clients"]
    [rules] = [c["rules"] for c in clients if c["match"] == {"uid": uid}]
    return rules


def test_the_narrowest_rules_per_client(learned: tuple[dict[str, Any], Path, Path, Path]) -> None:
    config, data, _, _ = learned
    a, b = _rules(config, 1001), _rules(config, 1002)
    assert a["cap_add"] == ["NET_ADMIN"] and a["bind_mounts"] == [str(data)]
    assert "POST /containers/create" in a["allow"] and "GET /containers/json" in a["allow"]
    assert not {"privileged", "host_namespaces", "exec_root"} & set(a)
    assert b == {"allow": ["GET /containers/json", "HEAD /_ping"], "unknown_fields": "refuse"}
    assert config["endpoints"] == {"* /**": {"pre": ["policy"], "post": ["policy"]}}


def test_the_learned_rules_served_allow_that_and_no_more(
    dockerd: str, learned: tuple[dict[str, Any], Path, Path, Path]
) -> None:
    _, data, _, out = learned
    root = Path(tempfile.mkdtemp(prefix="ps-learned-"))
    root.chmod(0o755)
    ps = _serve(dockerd, root, ("serve",), ["--config", str(out)])
    try:
        a, b = as_uid(root, 1001), as_uid(root, 1002)
        for args in _what_1001_does(data):
            a(*args)
        b("ps")
        refused = {
            ("run", "--rm", "--privileged", "busybox", "true"): "privileged containers",
            (
                "run",
                "--rm",
                "--cap-add",
                "SYS_ADMIN",
                "busybox",
                "true",
            ): "SYS_ADMIN is not allowed",
            ("run", "--rm", "-v", "/etc:/x", "busybox", "true"): "bind mount of /etc",
            ("volume", "ls"): "GET /v1.41/volumes is not in the allow-list",
        }
        for args, why in refused.items():
            got = a(*args, check=False)
            assert got.returncode != 0 and why.encode() in got.stderr, (args, got.stderr)
        got = b("create", "busybox", check=False)
        assert b"is not in the allow-list" in got.stderr, got.stderr
        got = as_uid(root, 1003)("ps", check=False)  # a client never seen: no rule set
        assert b"no rule set matches client" in got.stderr, got.stderr
    finally:
        ps.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_check_names_what_a_rule_set_would_refuse(
    dockerd: str, learned: tuple[dict[str, Any], Path, Path, Path], tmp_path: Path
) -> None:
    config, _, record, out = copy.deepcopy(learned)
    env_upstream = ["--upstream", dockerd]
    passed = subprocess.run(
        [PLUGSTRIP, "policy", "check", str(record), "--config", str(out), *env_upstream],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert passed.returncode == 0 and passed.stdout == "", passed
    assert passed.stderr.startswith("0 of "), passed.stderr
    _rules(config, 1001).pop("cap_add")  # a rule set that forgot one capability
    stricter = tmp_path / "stricter.yml"
    stricter.write_text(yaml.safe_dump(config))
    failed = subprocess.run(
        [PLUGSTRIP, "policy", "check", str(record), "--config", str(stricter), *env_upstream],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1, failed
    [line] = failed.stdout.splitlines()
    assert line.startswith("uid=1001 POST /v1.41/containers/create") and "CapAdd" in line, line
    assert failed.stderr.startswith("1 of "), failed.stderr


def test_learning_from_a_record_gives_the_same_rules(
    learned: tuple[dict[str, Any], Path, Path, Path],
) -> None:
    config, _, record, _ = learned
    again = subprocess.run(
        [PLUGSTRIP, "policy", "learn", "--from", str(record)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert yaml.safe_load(again.stdout) == config
