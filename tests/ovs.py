"""A private Open vSwitch (userspace datapath) inside a test's "host" namespace, with its
own run, db and log directories (the machine's /var/run/openvswitch is not used)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


@contextmanager
def ovs_in(netns_path: str, workdir: Path) -> Iterator[str]:
    """Start ovsdb-server and ovs-vswitchd in ``netns_path``; yields the OVSDB URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OVS_RUNDIR": str(workdir),
        "OVS_DBDIR": str(workdir),
        "OVS_LOGDIR": str(workdir),
    }
    enter = ["nsenter", f"--net={netns_path}"]
    db = workdir / "conf.db"
    sock = workdir / "db.sock"
    subprocess.run(["ovsdb-tool", "create", str(db), SCHEMA], check=True, env=env)
    subprocess.run(
        [
            *enter,
            "ovsdb-server",
            str(db),
            f"--remote=punix:{sock}",
            f"--pidfile={workdir}/ovsdb.pid",
            "--detach",
            f"--log-file={workdir}/ovsdb.log",
        ],
        check=True,
        env=env,
    )
    try:
        subprocess.run(["ovs-vsctl", f"--db=unix:{sock}", "--no-wait", "init"], check=True, env=env)
        subprocess.run(
            [
                *enter,
                "ovs-vswitchd",
                f"unix:{sock}",
                f"--pidfile={workdir}/vswitchd.pid",
                "--detach",
                f"--log-file={workdir}/vswitchd.log",
            ],
            check=True,
            env=env,
        )
        yield f"unix:{sock}"
    finally:
        pids = []
        for name in ("vswitchd.pid", "ovsdb.pid"):
            try:
                pid = int((workdir / name).read_text())
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 10  # gone before the namespace is
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.05)
