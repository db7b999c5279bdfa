"""What an adapter is to the proxy: a live object with hooks, the policy its hooks run
under, and, for a built-in, the routes it owns. The pipeline runs these; the manager
starts and closes them; neither defines them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from plugstrip.proxy.config import DEFAULT_TIMEOUT, FailurePolicy
from plugstrip.proxy.routes import Route


@dataclass(frozen=True)
class HookPolicy:
    """How the pipeline runs an adapter's hooks: under this deadline, and on a failure
    other than ``Refuse`` either refusing the call (fail closed) or skipping the adapter."""

    timeout: float = DEFAULT_TIMEOUT
    on_failure: FailurePolicy = "refuse"


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter as the pipeline runs it: a live object with hooks, under a policy."""

    name: str
    instance: Any
    policy: HookPolicy = HookPolicy()


@dataclass(frozen=True)
class BuiltIn:
    """An adapter that is part of plugstrip, on the routes it owns."""

    routes: tuple[Route, ...]
    adapter: LoadedAdapter
    # Asked per call, cheaply, before anything is held: False lets the call pass as if
    # the built-in were not there.
    wants: Callable[[str, str], bool] = lambda method, path: True
