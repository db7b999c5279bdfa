"""The admin listener: Prometheus metrics, status and the trace of intercepted calls.

It is separate from the Docker API socket so that scraping metrics never grants access to
the daemon.
"""

from __future__ import annotations

from aiohttp import web

from plugstrip.proxy.server import ProxyServer


def admin_app(server: ProxyServer) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        await server.metrics.refresh()
        return web.Response(
            body=server.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def status(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "upstream": str(server.shared.upstream.address),
                "config": server.config_path,
                "adapters": [a.name for a in server.shared.loaded.registry],
                "connections": server.connection_count,
            }
        )

    async def trace(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "0")) or None
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be a number") from None
        return web.json_response(server.shared.trace.recent(limit))

    async def reload(_: web.Request) -> web.Response:
        ok = await server.reload()
        return web.json_response({"reloaded": ok}, status=200 if ok else 400)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    app.router.add_get("/trace", trace)
    app.router.add_post("/reload", reload)
    return app
