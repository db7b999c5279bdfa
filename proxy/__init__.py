"""The core: the HTTP front, the hook contract, the pipeline and the adapter loaders.

It imports no adapter and no driver; adapters import the names below.
"""

from plugstrip.proxy.contract import (
    AdapterError,
    Call,
    Headers,
    HttpRequest,
    HttpResponse,
    Peer,
    Refuse,
)

__all__ = ["AdapterError", "Call", "Headers", "HttpRequest", "HttpResponse", "Peer", "Refuse"]
