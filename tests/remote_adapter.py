"""A Powerstrip-protocol adapter server for the tests, run as its own process.

``python -m tests.remote_adapter (--port N | --unix PATH) --record FILE``; the path picks the
behaviour: /label (pre: add a label), /warn (post: add a warning), /refuse (403), /slow
(sleeps 30 s), /boom (500), /nonjson, /echo (no change). Every payload received is appended
to the record file as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web


def build(record: str) -> web.Application:
    async def hook(request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        with open(record, "a") as f:  # noqa: ASYNC230 (a test tool; tiny appends)
            f.write(json.dumps({"path": request.path, "payload": payload}) + "\n")
        kind = request.match_info["kind"]
        if kind == "refuse":
            return web.json_response({"message": "not today, says the adapter"}, status=403)
        if kind == "slow":
            await asyncio.sleep(30)
        if kind == "boom":
            return web.Response(status=500, text="adapter exploded")
        if kind == "nonjson":
            return web.Response(text="this is not json")
        if payload["Type"] == "pre-hook":
            req = payload["ClientRequest"]
            if kind == "label" and req["Body"]:
                body = json.loads(req["Body"])
                body.setdefault("Labels", {})["plugstrip.test"] = "from-remote"
                req["Body"] = json.dumps(body)
            return web.json_response({"PowerstripProtocolVersion": 1, "ModifiedClientRequest": req})
        resp = payload["ServerResponse"]
        if kind == "warn" and resp["Body"]:
            body = json.loads(resp["Body"])
            body["Warnings"] = [*(body.get("Warnings") or []), "remote post-hook was here"]
            resp["Body"] = json.dumps(body)
        return web.json_response({"PowerstripProtocolVersion": 1, "ModifiedServerResponse": resp})

    app = web.Application()
    app.router.add_post("/{kind}", hook)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--unix")
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    app = build(args.record)
    if args.unix:
        web.run_app(app, path=args.unix, print=None)
    else:
        web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
