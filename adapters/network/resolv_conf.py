"""A container's resolv.conf pointed at plugstrip's name server and back.

A container plugged in its own namespace (not through a holder) asks the resolvers dockerd
wrote for it: the host's, or Docker's embedded one. plugstrip's name server takes their
place in the file and asks them what it does not answer itself; which ones they were is
kept in the file, so a plugstrip restart, a second network or a ``docker restart`` finds
them, and the last disconnect puts them back. The file is rewritten in place (it is a bind
mount of dockerd's copy, which a rename would not reach), through the container's
``/proc/PID/root``; dockerd leaves a file it did not write as it is.
"""

from __future__ import annotations

from pathlib import Path

UPSTREAM = "# plugstrip-upstream "
NOTE = "# plugstrip answers its networks' names here and asks the resolvers below for the rest"


def upstreams(text: str) -> tuple[str, ...]:
    """The resolvers the container had: those kept by plugstrip, else its nameservers."""
    kept = tuple(line[len(UPSTREAM) :].strip() for line in text.splitlines() if _kept(line))
    return kept or tuple(_nameservers(text))


def pointed_at(text: str, address: str) -> str:
    """``text`` with ``address`` as its only nameserver, the resolvers it had kept."""
    rest = [ln for ln in text.splitlines() if not _ours(ln) and not _nameserver(ln)]
    kept = [f"{UPSTREAM}{server}" for server in upstreams(text)]
    return "\n".join([NOTE, *kept, f"nameserver {address}", *rest]) + "\n"


def restored(text: str) -> str:
    """``text`` as it was before :func:`pointed_at`."""
    if not any(_kept(ln) for ln in text.splitlines()):
        return text
    rest = [ln for ln in text.splitlines() if not _ours(ln) and not _nameserver(ln)]
    return "\n".join([*(f"nameserver {s}" for s in upstreams(text)), *rest]) + "\n"


def path(pid: int) -> Path:
    return Path(f"/proc/{pid}/root/etc/resolv.conf")


def rewrite(pid: int, change: str | None) -> tuple[str, ...]:
    """Point the file of the container whose process is ``pid`` at ``change`` (an address),
    or back (None); returns the resolvers it had. A container without the file (it made
    its own, or it is gone) is left alone."""
    file = path(pid)
    try:
        text = file.read_text()
        new = restored(text) if change is None else pointed_at(text, change)
        if new != text:
            with file.open("r+") as out:  # in place: the bind mount stays the file
                out.write(new)
                out.truncate()
    except OSError:
        return ()
    return upstreams(text)


def _nameservers(text: str) -> list[str]:
    return [ln.split()[1] for ln in text.splitlines() if _nameserver(ln) and len(ln.split()) > 1]


def _nameserver(line: str) -> bool:
    return line.split()[:1] == ["nameserver"]


def _kept(line: str) -> bool:
    return line.startswith(UPSTREAM)


def _ours(line: str) -> bool:
    return _kept(line) or line == NOTE
