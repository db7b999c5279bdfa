"""Adapters' life cycle: ``start`` before the first call, ``close`` after the last.

An adapter may have either, plain or async. Its ``close`` is pushed on the caller's exit
stack before its ``start`` runs, so one that fails half way through starting is closed
too, and everything started before it is closed in reverse order (``close`` must cope
with a start that did not finish).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any


async def enter(stack: AsyncExitStack, instance: object) -> None:
    """Start ``instance``, with its close on ``stack`` first."""
    on_close(stack, instance)
    await start(instance)


def on_close(stack: AsyncExitStack, instance: object) -> None:
    close = getattr(instance, "close", None)
    if callable(close):
        stack.push_async_callback(_call, close)


async def start(instance: object) -> None:
    begin = getattr(instance, "start", None)
    if callable(begin):
        await _call(begin)


async def _call(fn: Callable[[], Any]) -> None:
    result = fn()
    if inspect.isawaitable(result):
        await result
