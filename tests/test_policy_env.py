"""``plugstrip serve --policy-from-env``: docker-socket-proxy's variables, unchanged."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.harness import Plugstrip, docker, start_plugstrip


def test_docker_socket_proxy_variables(dockerd: str, tmp_path: Path) -> None:
    def serve(name: str, env: dict[str, str], *flags: str) -> str:
        ps = start_plugstrip(dockerd, tmp_path / name, extra=["--policy-from-env", *flags], env=env)
        started.append(ps)
        return ps.host

    started: list[Plugstrip] = []
    name = f"dsp-{uuid.uuid4().hex[:6]}"
    try:
        reader = serve("ro", {"CONTAINERS": "1"})
        assert docker(reader, "ps").returncode == 0
        assert docker(reader, "version").returncode == 0  # VERSION=1 by default
        for args, said in (
            (("create", "busybox"), b"POST /v1.41/containers/create is not in the allow-list"),
            (("images",), b"GET /v1.41/images/json is not in the allow-list"),
            (("network", "ls"), b"is not in the allow-list"),
        ):
            out = docker(reader, *args, check=False)
            assert out.returncode != 0 and said in out.stderr, (args, out.stderr)

        writer = serve("rw", {"CONTAINERS": "1", "IMAGES": "1", "POST": "1"})
        out = docker(writer, "create", "--privileged", "busybox", check=False)
        assert b"plugstrip policy: privileged containers are not allowed" in out.stderr
        docker(writer, "create", "--name", name, "--network", "none", "busybox", "true")
        docker(writer, "rm", name)

        loose = serve("loose", {"CONTAINERS": "1", "POST": "1"}, "--no-body-checks")
        docker(loose, "create", "--name", name, "--privileged", "--network", "none", "busybox")
        assert docker(dockerd, "inspect", "-f", "{{.HostConfig.Privileged}}", name).stdout == (
            b"true\n"
        )
    finally:
        docker(dockerd, "rm", "-f", name, check=False)
        for ps in started:
            ps.stop()
