"""The configuration file: Powerstrip's ``adapters.yml`` unchanged, plus our extensions.

::

    version: 1
    defaults: {timeout: 10, on_failure: refuse}      # optional
    endpoints:
      "POST /*/containers/create": {pre: [guard], post: [audit]}
    adapters:
      guard: http://127.0.0.1:9000/hook              # Powerstrip v1 remote adapter
      audit: {use: audit, options: {path: /var/log/plugstrip-audit.jsonl}}
      mine:  {python: "mypkg.hooks:Mine", options: {...}, timeout: 2, on_failure: skip}
      far:   {url: "http+unix://%2Frun%2Fhook.sock/", timeout: 5}

``on_failure: refuse`` (the default) fails closed: a hook that times out or breaks ends the
call with an error; ``skip`` logs and goes on as if the adapter were not there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from plugstrip.proxy.routes import Route, RouteError

FailurePolicy = Literal["refuse", "skip"]
_FAILURE_POLICIES = ("refuse", "skip")
DEFAULT_TIMEOUT = 10.0


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    kind: Literal["remote", "python", "entrypoint"]
    target: str  # URL, "module:Class", or entry-point name
    options: dict[str, Any] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    on_failure: FailurePolicy = "refuse"


@dataclass(frozen=True)
class EndpointSpec:
    route: Route
    pre: tuple[str, ...]
    post: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    endpoints: tuple[EndpointSpec, ...] = ()
    adapters: dict[str, AdapterSpec] = field(default_factory=dict)

    def before(self, other: Config) -> Config:
        """This configuration's endpoints first, then ``other``'s (flags before the file)."""
        clash = sorted(set(self.adapters) & set(other.adapters))
        if clash:
            raise ConfigError(f"adapters {', '.join(clash)}: named by flags and by the file")
        return Config(self.endpoints + other.endpoints, {**self.adapters, **other.adapters})


def load_file(path: str | Path) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    try:
        return parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def parse(text: str) -> Config:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from exc
    if doc is None:
        return Config()
    data = _mapping(doc, "the file")
    _only_keys(data, {"version", "endpoints", "adapters", "defaults"}, "the file")
    if data.get("version", 1) != 1:
        raise ConfigError(f"version: expected 1, got {data['version']!r}")
    defaults = _mapping(_absent_empty(data.get("defaults")), "defaults")
    _only_keys(defaults, {"timeout", "on_failure"}, "defaults")
    timeout = _timeout(defaults.get("timeout", DEFAULT_TIMEOUT), "defaults.timeout")
    on_failure = _failure(defaults.get("on_failure", "refuse"), "defaults.on_failure")
    adapters = {
        str(name): _adapter(str(name), raw, timeout, on_failure)
        for name, raw in _mapping(_absent_empty(data.get("adapters")), "adapters").items()
    }
    endpoints = tuple(
        _endpoint(str(key), raw, adapters)
        for key, raw in _mapping(_absent_empty(data.get("endpoints")), "endpoints").items()
    )
    return Config(endpoints, adapters)


def _adapter(name: str, raw: Any, timeout: float, on_failure: FailurePolicy) -> AdapterSpec:
    where = f"adapters.{name}"
    if isinstance(raw, str):  # Powerstrip's form: a URL
        return AdapterSpec(name, "remote", _url(raw, where), {}, timeout, on_failure)
    spec = _mapping(raw, where)
    _only_keys(spec, {"url", "python", "use", "options", "timeout", "on_failure"}, where)
    kinds = [k for k in ("url", "python", "use") if k in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of url, python, use")
    options = _mapping(_absent_empty(spec.get("options")), f"{where}.options")
    timeout = _timeout(spec.get("timeout", timeout), f"{where}.timeout")
    on_failure = _failure(spec.get("on_failure", on_failure), f"{where}.on_failure")
    if kinds[0] == "url":
        if options:
            raise ConfigError(f"{where}: a remote adapter takes no options")
        return AdapterSpec(name, "remote", _url(spec["url"], where), {}, timeout, on_failure)
    target = spec[kinds[0]]
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{where}.{kinds[0]}: expected a non-empty string")
    kind: Literal["python", "entrypoint"] = "python" if kinds[0] == "python" else "entrypoint"
    return AdapterSpec(name, kind, target, dict(options), timeout, on_failure)


def _endpoint(key: str, raw: Any, adapters: dict[str, AdapterSpec]) -> EndpointSpec:
    where = f"endpoints[{key!r}]"
    try:
        route = Route.parse(key)
    except RouteError as exc:
        raise ConfigError(str(exc)) from exc
    spec = _mapping(_absent_empty(raw), where)
    _only_keys(spec, {"pre", "post"}, where)
    chains = []
    for hook in ("pre", "post"):
        names = spec.get(hook)
        names = [] if names is None else names
        if not isinstance(names, list):
            raise ConfigError(f"{where}.{hook}: expected a list of adapter names")
        for n in names:
            if not isinstance(n, str):
                raise ConfigError(
                    f"{where}.{hook}: {n!r} is not an adapter name (YAML reads bare "
                    "no/yes/on/off as booleans: quote the name)"
                )
        for n in names:
            if n not in adapters:
                raise ConfigError(f"{where}.{hook}: no adapter named {n!r} under adapters")
        chains.append(tuple(names))
    return EndpointSpec(route, chains[0], chains[1])


def _absent_empty(value: Any) -> Any:
    """A key present with no value (``pre:``) reads as empty; ``[]`` where a mapping is due
    stays wrong."""
    return {} if value is None else value


def _mapping(value: Any, where: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _only_keys(value: dict[Any, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _url(value: Any, where: str) -> str:
    ok = ("http://", "https://", "http+unix://")
    if not isinstance(value, str) or not value.startswith(ok):
        raise ConfigError(f"{where}: expected an http://, https:// or http+unix:// URL")
    return value


def _timeout(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}: expected a positive number of seconds")
    return float(value)


def _failure(value: Any, where: str) -> FailurePolicy:
    if value not in _FAILURE_POLICIES:
        raise ConfigError(f"{where}: expected one of {', '.join(_FAILURE_POLICIES)}")
    return "refuse" if value == "refuse" else "skip"
