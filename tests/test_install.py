"""README's first step on a stock Debian 12: a bookworm root made with mmdebstrap, with
only what a minimal install has (python3, git, ca-certificates: no pip, and its Python
externally managed), runs scripts/install-deps from a clone, and plugstrip then runs."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.system  # namespaces, devices, daemons or installs of its own

REPO = Path(__file__).resolve().parent.parent
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _run(*cmd: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def stock_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "bookworm"
    mirror = _run(str(REPO / "scripts/apt-mirror")).stdout.strip()
    made = _run(
        "mmdebstrap", "--quiet", "--variant=apt", "--include=python3,git,ca-certificates",
        "bookworm", str(root), mirror,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    # What every machine of this workplace adds to a stock system to reach the package
    # indexes (its resolver, its TLS trust anchors, pip's setting to use them); nothing else.
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    for ca in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(ca, root / "usr/local/share/ca-certificates" / ca.name)
    if Path("/etc/pip.conf").exists():
        shutil.copy("/etc/pip.conf", root / "etc/pip.conf")
    mounts = [root / "proc", root / "dev"]
    subprocess.run(["mount", "-t", "proc", "proc", str(mounts[0])], check=True)
    subprocess.run(["mount", "--bind", "/dev", str(mounts[1])], check=True)
    try:
        yield root
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", str(m)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def _in_root(root: Path, script: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return _run(
        "chroot", str(root), "/usr/bin/env", "-i", f"PATH={PATH}", "HOME=/root",
        "DEBIAN_FRONTEND=noninteractive", "/bin/bash", "-c", script, timeout=timeout,
    )  # fmt: skip


@pytest.mark.timeout(1800)
def test_install_deps_on_stock_debian_12(stock_root: Path) -> None:
    # As the user has it: no pip, and pip would be refused anyway (PEP 668).
    bare = _in_root(stock_root, "python3 -m pip --version")
    assert bare.returncode != 0 and "No module named pip" in bare.stderr
    assert (stock_root / "usr/lib/python3.11/EXTERNALLY-MANAGED").exists()
    # A clone of this repository, with the working tree's files as they are now.
    clone = stock_root / "root/plugstrip"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    assert _in_root(stock_root, "update-ca-certificates").returncode == 0
    installed = _in_root(stock_root, "cd /root/plugstrip && scripts/install-deps")
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    helped = _in_root(stock_root, "plugstrip serve --help")
    assert helped.returncode == 0, helped.stderr
    assert "--upstream" in helped.stdout and "--mtu" in helped.stdout
    where = _in_root(stock_root, 'readlink -f "$(command -v plugstrip)"').stdout.strip()
    assert where == "/opt/plugstrip/bin/plugstrip"
    # One package, from the checkout through setuptools' strict editable mode (the link
    # tree mypy can follow), even with Debian's pip: nothing top-level named proxy.
    probe = _in_root(
        stock_root,
        "cd / && /opt/plugstrip/bin/python -c 'import importlib.util as u, plugstrip.proxy.server"
        ' as s; print(u.find_spec("proxy"), u.find_spec("adapters"), s.__file__)\'',
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [
        "None",
        "None",
        "/root/plugstrip/build/__editable__.plugstrip-0.1.0-py3-none-any/plugstrip/proxy/server.py",
    ], probe.stdout
    for tool in ("dockerd", "ovs-vswitchd", "etcd", "catatonit", "busybox"):
        assert _in_root(stock_root, f"command -v {tool}").returncode == 0, tool
    # A second run installs nothing new and still succeeds.
    again = _in_root(stock_root, "cd /root/plugstrip && scripts/install-deps", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
