"""Turns adapter specs from the configuration into live adapter objects, in order."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any

from plugstrip.proxy.adapter_model import HookPolicy, LoadedAdapter
from plugstrip.proxy.config import AdapterSpec, ConfigError
from plugstrip.proxy.contract import hooks_of
from plugstrip.proxy.docker_api import DockerApi
from plugstrip.proxy.remote import RemoteAdapter

ENTRY_POINT_GROUP = "plugstrip.adapters"


class Registry:
    """Live adapters by name, not started yet (the manager starts them). Built whole or
    not at all, so a bad reload changes nothing."""

    def __init__(self, specs: Iterable[AdapterSpec], daemon: DockerApi | None = None) -> None:
        # Remote adapters open their HTTP sessions lazily, so a half-built registry holds
        # nothing that needs closing.
        self._adapters: dict[str, LoadedAdapter] = {}
        for spec in specs:
            if spec.name in self._adapters:
                raise ConfigError(f"adapters.{spec.name}: defined twice")
            instance = _instantiate(spec)
            bind = getattr(instance, "bind_daemon", None)
            if daemon is not None and callable(bind):
                bind(daemon)  # an adapter that asks the daemon (the policy's lookups)
            self._adapters[spec.name] = LoadedAdapter(
                spec.name, instance, HookPolicy(spec.timeout, spec.on_failure)
            )

    def __getitem__(self, name: str) -> LoadedAdapter:
        return self._adapters[name]

    def __iter__(self) -> Iterator[LoadedAdapter]:
        return iter(self._adapters.values())


def _instantiate(spec: AdapterSpec) -> Any:
    where = f"adapters.{spec.name}"
    if spec.kind == "remote":
        return RemoteAdapter(spec.target)
    factory = (
        _resolve_python(spec.target, where)
        if spec.kind == "python"
        else (_resolve_entry_point(spec.target, where))
    )
    try:
        instance = factory(**spec.options)
    except Exception as exc:
        raise ConfigError(f"{where}: could not create {spec.target}: {exc}") from exc
    if not hooks_of(instance):
        raise ConfigError(f"{where}: {spec.target} has neither pre_hook nor post_hook")
    return instance


def _resolve_python(target: str, where: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{where}: expected 'package.module:Class', got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: cannot import {module_name}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"{where}: {module_name} has no {attr}") from exc


def _resolve_entry_point(name: str, where: str) -> Any:
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise ConfigError(
            f"{where}: no adapter {name!r} in entry points {ENTRY_POINT_GROUP} "
            f"(installed: {', '.join(known) or 'none'})"
        )
    try:
        return next(iter(found)).load()
    except Exception as exc:
        raise ConfigError(f"{where}: loading entry point {name!r} failed: {exc}") from exc
