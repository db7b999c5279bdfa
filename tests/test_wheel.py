"""The wheel holds one namespace, plugstrip.*, made from the folders the layout keeps."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.system  # namespaces, devices, daemons or installs of its own

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import importlib.util, sys
from importlib.metadata import entry_points
import plugstrip.proxy, plugstrip.adapters.policy, plugstrip.adapters.network
import plugstrip.netdrivers.control.service, plugstrip.cli.main
assert plugstrip.proxy.__file__.startswith(sys.prefix), plugstrip.proxy.__file__
for name in ("proxy", "adapters", "netdrivers", "cli"):
    assert importlib.util.find_spec(name) is None, name + " is importable at the top level"
adapters = {ep.name: ep.load() for ep in entry_points(group="plugstrip.adapters")}
assert adapters["policy"] is plugstrip.adapters.policy.PolicyAdapter, adapters
print("ok")
"""


def test_wheel_installs_only_the_plugstrip_namespace(tmp_path: Path) -> None:
    source = tmp_path / "src"  # the checkout's files, so the build writes nothing into it
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        path = ROOT / name.decode()
        if path.is_file():
            (source / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            (source / name.decode()).write_bytes(path.read_bytes())
    out = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True,
    )
    (wheel,) = out.glob("plugstrip-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"plugstrip", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    packages = {n.split("/")[1] for n in names if n.startswith("plugstrip/")}
    assert packages == {"proxy", "adapters", "netdrivers", "cli"}, packages
    assert "plugstrip/proxy/py.typed" in names  # PEP 561: type checkers read it
    assert "plugstrip/adapters/network/shapes.py" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
    )
    # The dependencies come from this environment's site-packages (a path, not its .pth
    # files, so its editable plugstrip stays out); the fresh venv's own comes first.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    probe = subprocess.run(
        [python, "-c", PROBE], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "ok", probe.stderr
    usage = subprocess.run([venv / "bin" / "plugstrip", "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "serve" in usage.stdout, usage.stderr
