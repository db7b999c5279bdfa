"""Why the network control plane refuses a request, as classes: the API edge maps each to
Docker's status in one place (libnetwork's ``types.BadRequestError``, ``NotFoundError``...)."""

from __future__ import annotations


class NetworkError(Exception):
    """A refusal the client can act on; its class says which kind."""


class Invalid(NetworkError):
    """The request itself is malformed: a bad CIDR, port, name or option."""


class NotFound(NetworkError):
    """It names a network, group or rule that does not exist."""


class Conflict(NetworkError):
    """It collides with what exists: a name, an overlapping subnet, an address in use."""


class Exhausted(NetworkError):
    """Nothing free is left to give: no subnet, address or VXLAN identifier."""


class Unavailable(NetworkError, ConnectionError):
    """A part it needs is away (the store, OVSDB) or cannot enforce it (a datapath)."""
