"""Every adapter's life cycle in one place, as mitmproxy's addon manager runs its addons'.

The built-ins (the network adapter) and each configuration's adapters are started and
closed the same way, by :class:`AdapterManager`. Built-ins own long-lived state (holders,
the datapath), so they start first, stay across reloads and close last. A configuration
is loaded whole, as a :class:`Loaded` pair (its adapters and the pipeline over them): its
adapters start as it is loaded, and a reload swaps in the new pair whole; the old one's
adapters close once the calls still using them had a grace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from plugstrip.proxy import lifecycle
from plugstrip.proxy.adapter_model import BuiltIn, LoadedAdapter
from plugstrip.proxy.config import Config, ConfigError
from plugstrip.proxy.docker_api import DockerApi
from plugstrip.proxy.metrics import Metrics
from plugstrip.proxy.pipeline import Pipeline
from plugstrip.proxy.registry import Registry

log = logging.getLogger("plugstrip.adapters")

# In-flight calls may still be using the adapters a reload replaced.
OLD_ADAPTERS_GRACE = 60.0


@dataclass(frozen=True, eq=False)
class Loaded:
    """One configuration's adapters and the pipeline that runs them (with the built-ins)."""

    registry: Registry
    pipeline: Pipeline
    _closing: AsyncExitStack = field(default_factory=AsyncExitStack, repr=False)


class AdapterManager:
    def __init__(
        self,
        builtins: Sequence[BuiltIn] = (),
        metrics: Metrics | None = None,
        daemon: DockerApi | None = None,
        grace: float = OLD_ADAPTERS_GRACE,
    ) -> None:
        self.builtins = tuple(builtins)
        self.metrics = metrics or Metrics()
        self.daemon = daemon  # for adapters' lookups (``bind_daemon``)
        self.grace = grace
        self._builtins_closing = AsyncExitStack()
        self._open: list[Loaded] = []  # started and not closed yet: current and retired
        self._retiring: set[asyncio.Task[None]] = set()

    def build(self, config: Config) -> Loaded:
        """``config``'s adapters, made (not started), with their pipeline; a ConfigError
        if any cannot be made."""
        registry = Registry(config.adapters.values(), self.daemon)
        return Loaded(registry, Pipeline(config, registry, self.metrics, self.builtins))

    async def start_builtins(self) -> None:
        await _start_all(self._builtins_closing, (b.adapter for b in self.builtins))

    async def start(self, loaded: Loaded) -> None:
        """Start ``loaded``'s adapters in order; if one fails, those started are closed
        and a ConfigError says which."""
        try:
            await _start_all(loaded._closing, loaded.registry)
        except BaseException:
            await loaded._closing.aclose()
            raise
        self._open.append(loaded)

    def retire(self, loaded: Loaded) -> None:
        """Close ``loaded``'s adapters after the grace (calls in flight still use them)."""
        task = asyncio.ensure_future(self._close_later(loaded))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def aclose(self) -> None:
        """Close every configuration's adapters (newest first), then the built-ins; each
        close runs even if one before it raised."""
        for task in list(self._retiring):
            task.cancel()
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self._builtins_closing.aclose)
            for loaded in self._open:
                stack.push_async_callback(loaded._closing.aclose)
            self._open.clear()

    async def _close_later(self, loaded: Loaded) -> None:
        await asyncio.sleep(self.grace)
        if loaded in self._open:
            self._open.remove(loaded)
            await loaded._closing.aclose()


async def _start_all(stack: AsyncExitStack, adapters: Iterable[LoadedAdapter]) -> None:
    """Start each adapter, its close on ``stack`` first (a half-started one is closed)."""
    for loaded in adapters:
        try:
            await lifecycle.enter(stack, loaded.instance)
        except Exception as exc:
            raise ConfigError(f"adapters.{loaded.name}: could not start: {exc}") from exc
