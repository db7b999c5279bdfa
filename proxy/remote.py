"""Remote adapters over HTTP, speaking the Powerstrip protocol v1.

Pre-hook:  ``{"PowerstripProtocolVersion": 1, "Type": "pre-hook",
"ClientRequest": {"Method", "Request", "Body"}}`` -> ``{"ModifiedClientRequest": {...}}``.
Post-hook: adds ``"ServerResponse": {"ContentType", "Body", "Code"}`` ->
``{"ModifiedServerResponse": {...}}``. ``Body`` is the body as text (or null), ``Request`` the
path with its query. In a post-hook ``ClientRequest`` is the request as it went upstream
(the one the daemon answered) and ``OriginalClientRequest`` the client's own; adapters
written for Powerstrip ignore the extra field.

Unlike Powerstrip, every field of the reply is honoured (``Method``, ``Request``, ``Code``,
``ContentType``), a 4xx reply refuses the call with that status and message, and a 5xx
reply, a non-JSON reply, a refused connection or a timeout is an adapter failure, handled
by the adapter's failure policy.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from plugstrip.proxy.contract import (
    AdapterError,
    Call,
    HttpRequest,
    HttpResponse,
    Refuse,
    dumps,
    loads,
)


class RemoteAdapter:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme == "http+unix":
            self._connector_socket: str | None = unquote(parts.netloc)
            self._url = f"http://localhost{parts.path or '/'}"
        else:
            self._connector_socket = None
            self._url = url
        self.url = url
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = (
                aiohttp.UnixConnector(self._connector_socket)
                if self._connector_socket is not None
                else aiohttp.TCPConnector()
            )
            # Timeouts are the pipeline's job (one per adapter, whatever its kind).
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def pre_hook(self, call: Call) -> None:
        reply = await self._ask(
            {
                "PowerstripProtocolVersion": 1,
                "Type": "pre-hook",
                "ClientRequest": _request_doc(call.request),
            },
            "ModifiedClientRequest",
        )
        req = call.request
        if "Method" in reply:
            req.method = _text(reply["Method"], "Method").upper()
        if "Request" in reply:
            req.target = _text(reply["Request"], "Request")
        if "Body" in reply:
            req.set_body(_body(reply["Body"]))

    async def post_hook(self, call: Call) -> None:
        resp = call.response
        assert resp is not None
        reply = await self._ask(
            {
                "PowerstripProtocolVersion": 1,
                "Type": "post-hook",
                "ClientRequest": _request_doc(call.request),
                "OriginalClientRequest": _request_doc(call.client_request),
                "ServerResponse": _response_doc(resp),
            },
            "ModifiedServerResponse",
        )
        if "Code" in reply:
            code = reply["Code"]
            if not isinstance(code, int) or not 100 <= code <= 599:
                raise AdapterError(f"adapter replied with an invalid Code {code!r}")
            resp.status = code
        if reply.get("ContentType"):
            resp.headers.set("Content-Type", _text(reply["ContentType"], "ContentType"))
        if "Body" in reply and not resp.streaming:
            resp.set_body(_body(reply["Body"]))

    async def _ask(self, payload: dict[str, Any], key: str) -> dict[str, Any]:
        try:
            async with self._client().post(
                self._url, data=dumps(payload), headers={"Content-Type": "application/json"}
            ) as http:
                raw = await http.read()
                status = http.status
        except aiohttp.ClientError as exc:
            raise AdapterError(f"cannot reach adapter at {self.url}: {exc}", 503) from exc
        if status >= 400:
            message = _message_of(raw) or f"adapter replied {status}"
            if status < 500:
                raise Refuse(status, message)
            raise AdapterError(f"adapter replied {status}: {message}", status)
        try:
            doc = loads(raw)
        except ValueError as exc:
            raise AdapterError(f"adapter at {self.url} replied with invalid JSON") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get(key), dict):
            raise AdapterError(f"adapter at {self.url} replied without a {key} object")
        result: dict[str, Any] = doc[key]
        return result


def _request_doc(req: HttpRequest) -> dict[str, Any]:
    return {"Method": req.method, "Request": req.target, "Body": _text_of(req.body)}


def _response_doc(resp: HttpResponse) -> dict[str, Any]:
    return {"ContentType": resp.content_type, "Body": _text_of(resp.body), "Code": resp.status}


def _text_of(body: bytes | None) -> str | None:
    if body is None:
        return None
    return body.decode("utf-8", errors="replace")


def _body(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    # Some adapters send the body as a JSON object rather than as its text.
    return dumps(value)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise AdapterError(f"adapter replied with an invalid {name} {value!r}")
    return value


def _message_of(raw: bytes) -> str:
    try:
        doc = loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace").strip()
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    return raw.decode("utf-8", errors="replace").strip()
