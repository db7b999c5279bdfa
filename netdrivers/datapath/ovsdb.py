"""Every OVSDB call the drivers make, in one place (ovsdbapp).

ovsdbapp runs the OVSDB IDL in a thread of its own and blocks its callers, so each call
here goes through ``asyncio.to_thread``. Everything plugstrip creates carries
``external_ids`` saying whose it is, so the state can be rebuilt from OVSDB alone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.open_vswitch import impl_idl

from plugstrip.netdrivers.domain.errors import Unavailable

OWNER = "plugstrip"


def detect_datapath() -> str:
    """``system`` when the kernel module is loaded, else the userspace ``netdev``. (OVS
    lists ``system`` among its datapath types whether the module is there or not.)"""
    return "system" if os.path.exists("/sys/module/openvswitch") else "netdev"


def _backend_of_its_own() -> Any:
    """ovsdbapp keeps a backend's connection on its class, set once: every later backend
    object would talk to the first one's server, even one stopped by ``close``. A class
    per connection keeps each database its own."""
    return type("OvsdbIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})


def rundir(url: str) -> str:
    """OVS's run directory, where its control sockets are: beside the OVSDB socket."""
    if url.startswith("unix:"):
        return str(Path(url.removeprefix("unix:")).parent)
    return os.environ.get("OVS_RUNDIR", "/var/run/openvswitch")


class OvsdbUnavailable(Unavailable):
    pass


Commands = Callable[[Any], list[Any]]


class Ovsdb:
    """A connection made on first use, so plugstrip starts (and serves other drivers)
    while Open vSwitch is not there."""

    def __init__(self, url: str, timeout: float = 10) -> None:
        self.url = url
        self._timeout = timeout
        self._api: Any = None
        self._connecting = asyncio.Lock()

    async def connect(self) -> Any:
        async with self._connecting:
            if self._api is None:

                def open_api() -> Any:
                    idl = connection.OvsdbIdl.from_server(self.url, "Open_vSwitch")
                    conn = connection.Connection(idl=idl, timeout=self._timeout)
                    return _backend_of_its_own()(conn)

                try:
                    self._api = await asyncio.to_thread(open_api)
                except Exception as exc:
                    raise OvsdbUnavailable(
                        f"plugstrip/ovs: cannot reach Open vSwitch at {self.url}: {exc}"
                    ) from exc
        return self._api

    async def close(self) -> None:
        """Stop ovsdbapp's connection thread, if one was opened."""
        async with self._connecting:
            api, self._api = self._api, None
        if api is not None:
            await asyncio.to_thread(api.ovsdb_connection.stop, self._timeout)

    async def _run(self, commands: Commands) -> list[Any]:
        """Build ``commands`` on the API and run them as one transaction."""
        api = await self.connect()

        def run() -> list[Any]:
            built = commands(api)
            with api.transaction(check_error=True) as txn:
                for command in built:
                    txn.add(command)
            return [c.result for c in built]

        return await asyncio.to_thread(run)

    async def ensure_bridge(self, name: str, datapath_type: str) -> None:
        await self._run(
            lambda api: [
                api.add_br(name, may_exist=True, datapath_type=datapath_type),
                api.db_set("Bridge", name, ("external_ids", {"owner": OWNER})),
            ]
        )

    async def has_bridge(self, name: str) -> bool:
        (names,) = await self._run(lambda api: [api.list_br()])
        return name in names

    async def bridge_ids(self, bridge: str) -> dict[str, str]:
        (ids,) = await self._run(lambda api: [api.db_get("Bridge", bridge, "external_ids")])
        return dict(ids)

    async def set_bridge_ids(self, bridge: str, ids: dict[str, str]) -> None:
        await self._run(lambda api: [api.db_set("Bridge", bridge, ("external_ids", ids))])

    async def remove_bridge_id(self, bridge: str, key: str) -> None:
        await self._run(
            lambda api: [api.db_remove("Bridge", bridge, "external_ids", key, if_exists=True)]
        )

    async def ensure_port(
        self, bridge: str, name: str, tag: int, external_ids: dict[str, str]
    ) -> None:
        """An access port (VLAN ``tag``) for a device that already exists, returning once
        ovs-vswitchd has attached it (it has an OpenFlow port number): before that, frames
        to and from it are dropped, and a container would start with a dead interface."""
        await self._run(
            lambda api: [
                api.add_port(bridge, name, may_exist=True),
                api.db_set("Port", name, ("tag", tag)),
                api.db_set("Interface", name, ("external_ids", {"owner": OWNER, **external_ids})),
            ]
        )
        deadline = asyncio.get_running_loop().time() + self._timeout
        while True:
            (ofport,) = await self._run(lambda api: [api.db_get("Interface", name, "ofport")])
            if isinstance(ofport, list):  # an optional column: [] until set
                ofport = ofport[0] if ofport else -1
            if int(ofport) > 0:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise OvsdbUnavailable(f"ovs-vswitchd did not attach port {name}")
            await asyncio.sleep(0.02)

    async def ensure_tunnel(
        self,
        bridge: str,
        name: str,
        tag: int,
        options: dict[str, str],
        external_ids: dict[str, str],
    ) -> None:
        """A VXLAN port (``options``: remote_ip, key) that is an access port of VLAN
        ``tag``: the network's frames leave through it encapsulated with its key. It is
        protected: NORMAL never forwards between protected ports, so what comes in from
        one peer is not flooded on to the others (split horizon: a full mesh of tunnels
        would otherwise loop broadcasts between three hosts)."""
        await self._run(
            lambda api: [
                api.add_port(bridge, name, may_exist=True),
                api.db_set("Port", name, ("tag", tag), ("protected", True)),
                api.db_set(
                    "Interface",
                    name,
                    ("type", "vxlan"),
                    ("options", options),
                    ("external_ids", {"owner": OWNER, **external_ids}),
                ),
            ]
        )

    async def interface_ids(self, name: str) -> dict[str, str]:
        (ids,) = await self._run(lambda api: [api.db_get("Interface", name, "external_ids")])
        return dict(ids)

    async def ports_with(self, key: str, value: str) -> list[str]:
        """Names of the interfaces whose ``external_ids`` have ``key`` = ``value``."""
        (rows,) = await self._run(
            lambda api: [
                api.db_find("Interface", ("external_ids", "=", {key: value}), columns=["name"])
            ]
        )
        return sorted(str(r["name"]) for r in rows)

    async def ofports(self) -> dict[str, int]:
        """Every interface's OpenFlow port number, by name (one without a number, or whose
        datapath could not attach it, -1, is left out)."""
        (rows,) = await self._run(
            lambda api: [api.db_list("Interface", columns=["name", "ofport"])]
        )
        return {
            str(r["name"]): r["ofport"]
            for r in rows
            if isinstance(r["ofport"], int) and r["ofport"] > 0
        }

    async def delete_port(self, name: str) -> None:
        await self._run(lambda api: [api.del_port(name, if_exists=True)])

    async def ports(self, bridge: str) -> list[str]:
        (names,) = await self._run(lambda api: [api.list_ports(bridge)])
        return list(names)

    async def interface(self, name: str) -> tuple[int, str]:
        """An interface's OpenFlow port number (-1: its datapath could not attach it, or
        could not open) and its ``error`` column ("" if none)."""
        (rows,) = await self._run(
            lambda api: [api.db_find("Interface", ("name", "=", name), columns=["ofport", "error"])]
        )
        if not rows:
            return -1, f"no interface {name}"
        ofport, error = rows[0]["ofport"], rows[0]["error"]
        number = ofport if isinstance(ofport, int) else -1
        return number, error if isinstance(error, str) else ""

    async def datapath_types(self) -> list[str]:
        (types,) = await self._run(lambda api: [api.db_get("Open_vSwitch", ".", "datapath_types")])
        return sorted(types)
