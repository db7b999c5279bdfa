"""`plugstrip doctor` against an Open vSwitch whose bridge's datapath cannot open: a
second userspace ovs-vswitchd in the same network namespace already holds the bridge's
device (what a new user met: connects failed after 10 s, and doctor said OVS was OK)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from plugstrip.netdrivers.datapath.ovs import INTEGRATION_BRIDGE
from tests import netns
from tests.harness import PLUGSTRIP
from tests.ovs import ovs_in


def _bridge(url: str, workdir: Path) -> None:
    subprocess.run(
        [
            "ovs-vsctl",
            f"--db={url}",
            "add-br",
            INTEGRATION_BRIDGE,
            "--",
            "set",
            "bridge",
            INTEGRATION_BRIDGE,
            "datapath_type=netdev",
        ],
        check=True,
        env={**os.environ, "OVS_RUNDIR": str(workdir)},
        capture_output=True,
    )


def _doctor(ns: str, url: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "nsenter",
            f"--net={netns.path(ns)}",
            PLUGSTRIP,
            "doctor",
            "--ovsdb",
            url,
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_doctor_fails_where_a_second_ovs_holds_the_bridges_datapath(tmp_path: Path) -> None:
    with netns.namespaces(1) as (ns,):
        with ovs_in(netns.path(ns), tmp_path / "first") as first:
            _bridge(first, tmp_path / "first")
            healthy = _doctor(ns, first, tmp_path / "state")
            assert "OK    open vswitch" in healthy.stdout, healthy.stdout
            with ovs_in(netns.path(ns), tmp_path / "second") as second:
                _bridge(second, tmp_path / "second")
                time.sleep(1)  # the second switch tries its datapath
                broken = _doctor(ns, second, tmp_path / "state")
    assert broken.returncode != 0, broken.stdout
    line = next(x for x in broken.stdout.splitlines() if "open vswitch" in x)
    assert line.startswith("FAIL") and "datapath is not open" in line, line
    assert "second ovs-vswitchd" in line, line
