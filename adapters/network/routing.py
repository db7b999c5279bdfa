"""How calls reach the network adapter's handlers.

Each module declares its table of ``On`` lines next to its handlers; the core's
:class:`~plugstrip.proxy.routes.Route` matches them and hands each handler what the
path's ``*`` matched (a name or an id). The pipeline's routes are made from the same lines.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs

from plugstrip.adapters.network import shapes
from plugstrip.netdrivers.domain.errors import (
    Conflict,
    Exhausted,
    Invalid,
    NetworkError,
    NotFound,
    Unavailable,
)
from plugstrip.proxy.contract import Call, Refuse, split_version
from plugstrip.proxy.routes import Route

Hook = Literal["pre_hook", "post_hook"]
Handler = Callable[..., Awaitable[None]]  # (call, *segments)

# The one place a kind of refusal becomes a status (the client's docker prints the message).
_STATUS: dict[type[NetworkError], int] = {
    Invalid: 400,
    NotFound: 404,
    Conflict: 409,
    Exhausted: 409,
    Unavailable: 503,
}


@dataclass(frozen=True)
class On:
    hook: Hook
    route: Route
    handler: Handler

    @classmethod
    def pre(cls, text: str, handler: Handler) -> On:
        return cls("pre_hook", Route.parse(text), handler)

    @classmethod
    def post(cls, text: str, handler: Handler) -> On:
        return cls("post_hook", Route.parse(text), handler)


def routes(table: Iterable[On]) -> tuple[Route, ...]:
    """Each route of ``table`` once, for the pipeline."""
    return tuple({on.route.text: on.route for on in table}.values())


async def dispatch(table: Sequence[On], call: Call) -> None:
    """Run the first handler whose route matches ``call`` as the client made it."""
    request = call.client_request
    method, (version, rest) = request.method.upper(), split_version(request.path)
    for on in table:
        segments = on.route.match_split(method, version, rest)
        if segments is None:
            continue
        try:
            await on.handler(call, *segments)
        except NetworkError as exc:
            raise refusal(exc) from None
        except ConnectionError as exc:  # a backend (OVSDB, the store) away, or a guard unset
            raise Refuse(503, str(exc)) from None
        return


def refusal(exc: NetworkError) -> Refuse:
    status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
    return Refuse(status, str(exc))


def query(call: Call, key: str) -> str | None:
    # as the request went upstream: plugstrip's networks are filtered as the daemon's were
    values = parse_qs(call.request.query).get(key)
    return values[0] if values else None


def filters(call: Call) -> dict[str, list[str]]:
    try:
        return shapes.parse_filters(query(call, "filters"))
    except shapes.FilterError as exc:
        raise Refuse(400, str(exc)) from None
