"""Adapters: the hook contract, their loading, and the built-in adapters."""

from adapters.contract import (
    AdapterError,
    Call,
    Headers,
    HttpRequest,
    HttpResponse,
    Peer,
    Refuse,
)

__all__ = ["AdapterError", "Call", "Headers", "HttpRequest", "HttpResponse", "Peer", "Refuse"]
