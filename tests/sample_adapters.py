"""Python adapters used by the tests through ``python: tests.sample_adapters:...``."""

from __future__ import annotations

import asyncio

from plugstrip.proxy.contract import Call


class Tagger:
    """Adds a label on create (in place on the parsed body) and reads it back after."""

    def __init__(self, value: str = "python") -> None:
        self.value = value

    def pre_hook(self, call: Call) -> None:
        body = call.request.json()
        body.setdefault("Labels", {})["plugstrip.tag"] = self.value
        call.context["tagged"] = self.value

    def post_hook(self, call: Call) -> None:
        assert call.response is not None
        body = call.response.json()
        body["Warnings"] = [*(body.get("Warnings") or []), f"tagged {call.context['tagged']}"]


class Reader:
    """Reads the JSON answer and changes nothing."""

    def post_hook(self, call: Call) -> None:
        assert call.response is not None
        call.context["id"] = call.response.json()["Id"]


class Broken:
    async def pre_hook(self, call: Call) -> None:
        call.request.json()["Labels"] = {"half": "done"}  # a change to be undone on skip
        raise RuntimeError("adapter bug")


class Sleepy:
    async def pre_hook(self, call: Call) -> None:
        await asyncio.sleep(30)


class Reroute:
    """Rewrites method, path, query and a header: what a pre-hook may change."""

    def pre_hook(self, call: Call) -> None:
        call.request.method = "PUT"
        call.request.target = "/v1.41/elsewhere?moved=1"
        call.request.headers.set("X-Rerouted", "yes")


class OwnsDemoNetwork:
    """Answers for a network the daemon has never heard of (as the network adapter will)."""

    def pre_hook(self, call: Call) -> None:
        if call.request.path.endswith("/networks/plugstrip-demo"):
            call.respond(
                200,
                {
                    "Name": "plugstrip-demo",
                    "Id": "d" * 64,
                    "Driver": "plugstrip/weave",
                    "Scope": "local",
                    "Labels": {},
                },
            )

    def post_hook(self, call: Call) -> None:
        assert call.response is not None
        if call.response.status == 200 and isinstance(call.response.json(), dict):
            call.response.json()["Labels"]["seen-by-post-hook"] = "yes"


class Lifecycle:
    """Writes its life to a file, one line per event: start, each call, close."""

    def __init__(self, log: str, fail_start: bool = False) -> None:
        self.log = log
        self.fail_start = fail_start

    def _write(self, event: str) -> None:
        with open(self.log, "a") as f:
            f.write(event + "\n")

    async def start(self) -> None:
        self._write("start")
        if self.fail_start:
            raise RuntimeError("cannot start")

    def pre_hook(self, call: Call) -> None:
        self._write("call")

    async def close(self) -> None:
        self._write("close")
