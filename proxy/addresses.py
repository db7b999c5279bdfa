"""``unix:///path`` and ``tcp://host:port`` addresses, as dockerd's ``-H`` takes them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit


@dataclass(frozen=True)
class SocketAddress:
    scheme: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, url: str, default_port: int = 2375) -> SocketAddress:
        if url.startswith("unix://"):
            path = url[len("unix://") :]
            if not path.startswith("/"):
                raise ValueError(f"{url!r}: a unix socket path must be absolute")
            return cls("unix", path=path)
        if url.startswith("tcp://"):
            parts = urlsplit(url)
            try:  # an explicit :0 asks for any free port
                port = default_port if parts.port is None else parts.port
            except ValueError as exc:
                raise ValueError(f"{url!r}: bad port") from exc
            if not parts.hostname or parts.path not in ("", "/"):
                raise ValueError(f"{url!r}: expected tcp://HOST:PORT")
            return cls("tcp", host=parts.hostname, port=port)
        raise ValueError(f"{url!r}: expected unix:///path or tcp://host:port")

    @property
    def is_loopback(self) -> bool:
        if self.scheme == "unix":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"
