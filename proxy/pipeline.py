"""The hook pipeline: which adapters run on a call, in what order, and what a failure does.

Every endpoint whose pattern matches contributes its chain, in configuration order (an
adapter named by several matching endpoints runs once, at its first place). Built-in
adapters (the network adapter) sit nearest the daemon: their pre-hooks run after the
configured ones and their post-hooks before, so users' adapters see calls as clients
make them. Each hook
runs under its adapter's timeout. ``Refuse`` always ends the call. Any other failure (a
timeout, an exception, a broken remote adapter) ends the call with an error when the
adapter's policy is ``refuse`` (the default: fail closed); with ``skip`` the adapter's
changes are undone and the chain goes on. Plain (non-async) hooks run on the event loop
and must not block.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from plugstrip.proxy.adapter_model import BuiltIn, LoadedAdapter
from plugstrip.proxy.config import Config, ConfigError
from plugstrip.proxy.contract import AdapterError, Call, HttpRequest, HttpResponse, Refuse
from plugstrip.proxy.metrics import Metrics
from plugstrip.proxy.registry import Registry
from plugstrip.proxy.routes import Route
from plugstrip.proxy.trace import Record, Step, changes

log = logging.getLogger("plugstrip.pipeline")

Hook = Literal["pre_hook", "post_hook"]
# Chains of the configured endpoints, by method and path (a container's calls repeat).
_CHAINS_REMEMBERED = 4096


@dataclass(frozen=True)
class Chain:
    endpoint: str
    pre: tuple[LoadedAdapter, ...]
    post: tuple[LoadedAdapter, ...]

    @functools.cached_property
    def finishers(self) -> tuple[LoadedAdapter, ...]:
        """The chain's adapters that have a ``finished`` hook, each once."""
        return tuple(
            a
            for a in _unique((*self.pre, *self.post))
            if callable(getattr(a.instance, "finished", None))
        )


class Pipeline:
    def __init__(
        self,
        config: Config,
        registry: Registry,
        metrics: Metrics,
        builtins: Sequence[BuiltIn] = (),
    ) -> None:
        self.builtins = tuple(builtins)
        self._metrics = metrics
        self._endpoints: list[tuple[Route, tuple[LoadedAdapter, ...], tuple[LoadedAdapter, ...]]]
        self._configured: dict[tuple[str, str], Chain | None] = {}
        self._endpoints = [
            (
                ep.route,
                tuple(registry[n] for n in ep.pre),
                tuple(registry[n] for n in ep.post),
            )
            for ep in config.endpoints
        ]
        for loaded in registry:
            self._check_post_calls(loaded)

    def _check_post_calls(self, loaded: LoadedAdapter) -> None:
        """An adapter that changes some answers (``post_calls``: the policy hiding other
        clients' objects) must be a post-hook wherever it is a pre-hook on those calls:
        configured otherwise, it would pass on what it means to hide. Refused at load."""
        for method, path in getattr(loaded.instance, "post_calls", ()):
            chain = self._chain(method, path, [])
            if chain is not None and loaded in chain.pre and loaded not in chain.post:
                raise ConfigError(
                    f"adapters.{loaded.name}: is a pre-hook on {method} {path} and must be"
                    " its post-hook too: it changes that answer"
                )

    def match(self, method: str, path: str) -> Chain | None:
        inner = [
            b.adapter
            for b in self.builtins
            if any(r.matches(method, path) for r in b.routes) and b.wants(method, path)
        ]
        if not inner:  # the configured endpoints alone: the same answer for the same call
            key = (method, path)
            if key not in self._configured:
                if len(self._configured) >= _CHAINS_REMEMBERED:
                    self._configured.clear()
                self._configured[key] = self._chain(method, path, [])
            return self._configured[key]
        return self._chain(method, path, inner)

    def _chain(self, method: str, path: str, inner: list[LoadedAdapter]) -> Chain | None:
        hits = [e for e in self._endpoints if e[0].matches(method, path)]
        if not hits and not inner:
            return None
        return Chain(
            " + ".join([route.text for route, _, _ in hits] + [a.name for a in inner]),
            _unique([*(a for _, pre, _ in hits for a in pre), *inner]),
            _unique([*inner, *(a for _, _, post in hits for a in post)]),
        )

    async def run(self, hook: Hook, chain: Chain, call: Call, record: Record) -> None:
        for loaded in chain.pre if hook == "pre_hook" else chain.post:
            await self._run_one(loaded, hook, call, record)
            if hook == "pre_hook" and call.response is not None:
                return  # answered (call.respond): the rest of the pre-hooks do not run

    async def finish(self, chain: Chain, call: Call) -> None:
        for loaded in chain.finishers:
            try:
                result = loaded.instance.finished(call)
                if result is not None and inspect.isawaitable(result):
                    async with asyncio.timeout(loaded.policy.timeout):
                        await result
            except Exception:
                log.exception("adapter %s finished hook failed", loaded.name)

    async def _run_one(self, loaded: LoadedAdapter, hook: Hook, call: Call, record: Record) -> None:
        fn = getattr(loaded.instance, hook, None)
        if fn is None:
            return
        policy = loaded.policy
        before = _message(call, hook).snapshot()
        started = time.perf_counter()
        failure: tuple[int, str] | None = None
        outcome = "ok"
        try:
            result = fn(call)
            if result is not None and inspect.isawaitable(result):
                # a deadline on this task, not a task per hook as wait_for makes
                async with asyncio.timeout(policy.timeout):
                    await result
        except Refuse as refusal:
            outcome = f"refused {refusal.status}: {refusal.message}"
            raise
        except TimeoutError:
            failure = (504, f"timed out after {policy.timeout:g}s")
        except AdapterError as exc:
            failure = (exc.status, str(exc))
        except Exception as exc:
            log.exception("adapter %s %s raised", loaded.name, hook)
            failure = (500, f"{type(exc).__name__}: {exc}")
        finally:
            seconds = time.perf_counter() - started
            if failure is not None:
                outcome = f"failed ({policy.on_failure}): {failure[1]}"
            after = _message(call, hook)
            after.settle()  # the message itself is compared: no second copy
            record.steps.append(Step(loaded.name, hook, seconds, outcome, changes(before, after)))
            self._metrics.observe_adapter(loaded.name, hook, outcome.split(" ")[0], seconds)
        if failure is None:
            return
        status, why = failure
        hook_name = hook.replace("_", "-")
        if policy.on_failure == "refuse":
            raise Refuse(status, f"plugstrip: adapter {loaded.name!r} {hook_name} failed: {why}")
        log.warning("adapter %s %s failed, skipped: %s", loaded.name, hook_name, why)
        _restore(call, hook, before)


def _message(call: Call, hook: Hook) -> HttpRequest | HttpResponse:
    if hook == "pre_hook":
        return call.request
    assert call.response is not None
    return call.response


def _restore(call: Call, hook: Hook, before: HttpRequest | HttpResponse) -> None:
    if isinstance(before, HttpRequest):
        call.request = before
        call.response = None  # an answer from the failed pre-hook is undone too
    elif isinstance(before, HttpResponse):
        call.response = before


def _unique(adapters: Iterable[LoadedAdapter]) -> tuple[LoadedAdapter, ...]:
    seen: dict[str, LoadedAdapter] = {}
    for a in adapters:
        seen.setdefault(a.name, a)
    return tuple(seen.values())
