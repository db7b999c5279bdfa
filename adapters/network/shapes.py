"""Docker Engine API shapes for plugstrip networks and endpoints (API 1.41), and the
network-list filters, so the docker CLI shows plugstrip networks beside Docker's own."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from netaddr import IPAddress, IPNetwork

from plugstrip.adapters.network import holder
from plugstrip.netdrivers.control.service import Attachment
from plugstrip.netdrivers.stores.store import NetworkRecord


def endpoint_id(attachment: Attachment) -> str:
    return hashlib.sha256(f"{attachment.network.id}/{attachment.owner}".encode()).hexdigest()


def _aux(record: NetworkRecord, subnet: IPNetwork) -> dict[str, Any]:
    """A subnet's aux addresses, where Docker shows them."""
    found = {name: str(a) for name, a in record.aux.items() if a in subnet}
    return {"AuxiliaryAddresses": found} if found else {}


def network(record: NetworkRecord, attachments: list[Attachment]) -> dict[str, Any]:
    created = datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z")
    return {
        "Name": record.name,
        "Id": record.id,
        "Created": created,
        "Scope": "local",
        "Driver": record.driver,
        "EnableIPv6": record.subnet6 is not None,
        "IPAM": {
            "Driver": "default",
            "Options": None,
            "Config": [
                {"Subnet": str(subnet), "Gateway": str(gateway)} | _aux(record, subnet)
                for subnet, gateway in (
                    (record.subnet, record.gateway),
                    (record.subnet6, record.gateway6),
                )
                if subnet is not None
            ],
        },
        "Internal": record.internal,
        "Attachable": True,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {
            a.meta.container: {
                "Name": a.meta.name,
                "EndpointID": endpoint_id(a),
                "MacAddress": a.mac,
                "IPv4Address": f"{a.address}/{record.subnet.prefixlen}",
                "IPv6Address": _with_prefix(a.address6, record.subnet6),
            }
            for a in attachments
            if a.meta.container
        },
        "Options": dict(record.options),
        "Labels": dict(record.labels),
    }


def container_endpoint(attachment: Attachment, container_id: str) -> dict[str, Any]:
    """An entry of a container's ``NetworkSettings.Networks`` (Docker lists the short ID
    among the aliases on user-defined networks, after the user's own)."""
    meta = attachment.meta
    requested = {
        key: value
        for key, value in (("IPv4Address", meta.requested), ("IPv6Address", meta.requested6))
        if value
    }
    network = attachment.network
    return {
        "IPAMConfig": requested or None,
        "Links": None,
        "Aliases": [*meta.aliases, container_id[:12]],
        "NetworkID": attachment.network.id,
        "EndpointID": endpoint_id(attachment),
        "Gateway": str(attachment.network.gateway),
        "IPAddress": str(attachment.address),
        "IPPrefixLen": attachment.network.subnet.prefixlen,
        "IPv6Gateway": str(network.gateway6 or ""),
        "GlobalIPv6Address": str(attachment.address6 or ""),
        "GlobalIPv6PrefixLen": network.subnet6.prefixlen if network.subnet6 else 0,
        "MacAddress": attachment.mac,
        # the endpoint's security groups, where Docker shows an endpoint's driver settings
        "DriverOpts": {holder.SECURITY_GROUPS: ",".join(attachment.groups)}
        if attachment.groups
        else None,
    }


def _with_prefix(address: IPAddress | None, subnet: IPNetwork | None) -> str:
    return f"{address}/{subnet.prefixlen}" if address is not None and subnet else ""


class FilterError(ValueError):
    pass


def parse_filters(text: str | None) -> dict[str, list[str]]:
    """Docker's ``filters`` query: ``{"name": ["a"]}`` or the older ``{"name": {"a": true}}``."""
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise FilterError(f"invalid filter: {exc}") from None
    if not isinstance(raw, dict):
        raise FilterError("invalid filter: expected a JSON object")
    out: dict[str, list[str]] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out[key] = [k for k, on in value.items() if on]
        elif isinstance(value, list):
            out[key] = [str(v) for v in value]
        else:
            raise FilterError(f"invalid filter {key!r}")
    return out


def matches(record: NetworkRecord, filters: dict[str, list[str]], in_use: bool) -> bool:
    """Docker's network filters: each key must match (labels all, others any value)."""
    tests: dict[str, Callable[[str], bool]] = {
        "name": lambda v: v in record.name,
        "id": lambda v: record.id.startswith(v),
        "driver": lambda v: v == record.driver,
        "type": lambda v: v == "custom",
        "scope": lambda v: v == "local",
        "label": lambda v: _label(record.labels, v),
        "label!": lambda v: not _label(record.labels, v),
        "dangling": lambda v: (v.lower() in ("true", "1")) != in_use,
        "until": lambda v: record.created < _timestamp(v),
    }
    for key, values in filters.items():
        if key not in tests:
            raise FilterError(f"invalid filter '{key}'")
        # labels must all match, as Docker's MatchKVList; other keys any of their values
        match = all if key in ("label", "label!") else any
        if values and not match(tests[key](v) for v in values):
            return False
    return True


def _label(labels: dict[str, str], test: str) -> bool:
    key, sep, value = test.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise FilterError(f"invalid until filter {text!r}") from None
