"""TLS contexts with dockerd's meaning of --tls / --tlsverify and the cert flags."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class TlsFiles:
    verify: bool
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """--tlsverify: client certificates are required and checked against --tlscacert."""
    if not files.cert or not files.key:
        raise ValueError("TLS on a listener needs --tlscert and --tlskey")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(files.cert, files.key)
    if files.verify:
        if not files.cacert:
            raise ValueError("--tlsverify needs --tlscacert")
        ctx.load_verify_locations(files.cacert)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """To a TLS daemon: the daemon's certificate is checked unless verify is off."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.cacert)
    if not files.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if files.cert and files.key:
        ctx.load_cert_chain(files.cert, files.key)
    return ctx
