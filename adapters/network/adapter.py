"""The built-in network adapter, composed: its handlers' tables, its life cycle, and how
the pipeline runs it."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from plugstrip.adapters.network.containers import ContainerCalls
from plugstrip.adapters.network.events import Events
from plugstrip.adapters.network.holder_life import Holders
from plugstrip.adapters.network.holder_pool import DEFAULT_SIZE
from plugstrip.adapters.network.networks import NetworkCalls
from plugstrip.adapters.network.routing import dispatch, routes
from plugstrip.netdrivers.control.flow_log import FlowLog
from plugstrip.netdrivers.control.guard import Guard
from plugstrip.netdrivers.control.mesh import Mesh
from plugstrip.netdrivers.control.service import NetworkService
from plugstrip.proxy.adapter_model import BuiltIn, HookPolicy, LoadedAdapter
from plugstrip.proxy.contract import Call, split_version
from plugstrip.proxy.docker_api import DockerApi

log = logging.getLogger("plugstrip.network")

# Fail closed, with a long deadline: a create makes and starts a holder and wires its
# namespace.
POLICY = HookPolicy(timeout=120.0)


class NetworkAdapter:
    def __init__(
        self,
        service: NetworkService,
        api: DockerApi,
        spare_holders: int = DEFAULT_SIZE,
        mesh: Mesh | None = None,
        guard: Guard | None = None,
        flow_log: FlowLog | None = None,
        parts: AsyncExitStack | None = None,
    ) -> None:
        self.service = service
        self.api = api
        self.mesh = mesh  # with other hosts: tunnels to them
        self.guard = guard  # security groups enforced
        self.flow_log = flow_log  # what they drop, sampled
        # what it was built over (the store, the drivers, their loop thread): its own to
        # close, after itself, so one manager runs the whole life cycle
        self.parts = parts or AsyncExitStack()
        self.holders = Holders(service, api, spare_holders)
        self.events = Events(service, api, self.holders)
        table = (
            *NetworkCalls(service, api, self.holders).table,
            *ContainerCalls(service, api, self.holders).table,
        )
        self._pre = tuple(on for on in table if on.hook == "pre_hook")
        self._post = tuple(on for on in table if on.hook == "post_hook")
        self.routes = routes(table)

    async def start(self) -> None:
        """Before plugstrip serves: remove datapath leftovers of a crash (nothing can be
        half-way through a create yet), then follow the daemon."""
        await self.service.start()  # the store's state, followed
        try:
            removed = await self.service.prune()
        except Exception as exc:
            log.warning("leftovers not pruned: %s", exc)
        else:
            if removed:
                log.info("removed leftovers: %s", ", ".join(removed))
        self.events.start()
        if self.mesh is not None:
            self.mesh.start()
        if self.guard is not None:
            self.guard.start()
        if self.flow_log is not None:
            self.flow_log.start()

    async def close(self) -> None:
        """Close what start started, then the parts; each close runs even if one before
        it raised (``start`` may not have finished)."""
        async with self.parts, AsyncExitStack() as stack:
            stack.push_async_callback(self.api.close)
            stack.push_async_callback(self.holders.close)
            for part in (self.mesh, self.guard):
                if part is not None:
                    stack.push_async_callback(part.close)
            stack.push_async_callback(self.events.close)
            if self.flow_log is not None:
                stack.push_async_callback(self.flow_log.close)

    def wants(self, method: str, path: str) -> bool:
        """Container lists and inspects, which dashboards poll, are none of this adapter's
        business while the daemon has no container of plugstrip's: they pass through as
        if plugstrip had no networks."""
        if self.holders.holding or method != "GET":
            return True
        return not split_version(path)[1].startswith("/containers/")

    async def pre_hook(self, call: Call) -> None:
        await dispatch(self._pre, call)

    async def post_hook(self, call: Call) -> None:
        await dispatch(self._post, call)

    def builtin(self) -> BuiltIn:
        """The adapter as the pipeline runs it."""
        return BuiltIn(self.routes, LoadedAdapter("network", self, POLICY), self.wants)
