"""Ownership over plugstrip networks, which the network adapter answers for, not the daemon:
two uids on one socket in a test host, the unchanged CLI, and a root client that sees all."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from tests.dockerhost import DockerHost
from tests.harness import wait_for
from tests.test_policy_clients import as_uid

CONFIG = """
endpoints:
  "* /**": {pre: [policy], post: [policy]}
adapters:
  policy:
    use: policy
    options:
      ownership: true
      clients:
        - match: {uid: 0}
          rules: {}
        - match: {}
          rules: {bind_mounts: []}
"""


def test_a_clients_plugstrip_network_is_absent_to_others(nethost: DockerHost) -> None:
    root = Path(tempfile.mkdtemp(prefix="ps-netown-"))
    root.chmod(0o755)
    sock = root / "shared.sock"
    nethost.start_plugstrip(CONFIG, ["--listen", f"unix://{sock}"])
    name, gone = f"own-{uuid.uuid4().hex[:6]}", f"gone-{uuid.uuid4().hex[:6]}"
    try:
        wait_for(sock.exists, 20, "no shared socket")
        sock.chmod(0o666)
        a, b, admin = as_uid(root, 1001), as_uid(root, 1002), as_uid(root, 0)
        a("network", "create", "-d", "plugstrip/weave", "--subnet", "10.77.1.0/24", name)
        assert name in a("network", "ls", "--format", "{{.Name}}").stdout.decode().split()
        assert name not in b("network", "ls", "--format", "{{.Name}}").stdout.decode().split()
        for args in (("network", "inspect", "NAME"), ("network", "rm", "NAME")):
            out = b(*(x.replace("NAME", name) for x in args), check=False)
            absent = b(*(x.replace("NAME", gone) for x in args), check=False)
            assert out.returncode == absent.returncode != 0, (args, out.stderr)
            assert out.stderr == absent.stderr.replace(gone.encode(), name.encode()), (
                out.stderr,
                absent.stderr,
            )
        owner = admin("network", "inspect", "-f", '{{index .Labels "io.plugstrip.owner"}}', name)
        assert owner.stdout == b"uid:1001\n"  # still there, and a's
        b("network", "prune", "-f")  # b's prune leaves a's network
        a("network", "rm", name)
    finally:
        nethost.docker("network", "rm", name, check=False)
        nethost.stop_plugstrip()
        shutil.rmtree(root, ignore_errors=True)
