"""The drivers plugstrip has, by name: one table for ``serve`` and the operator commands."""

from __future__ import annotations

from dataclasses import dataclass

from netaddr import IPAddress

from plugstrip.netdrivers.datapath.ovs import OvsDriver
from plugstrip.netdrivers.datapath.ovsdb import Ovsdb
from plugstrip.netdrivers.datapath.weave import WeaveDriver
from plugstrip.netdrivers.domain.contract import Driver

DEFAULT_OVSDB = "unix:/var/run/openvswitch/db.sock"


@dataclass(frozen=True)
class DriverSettings:
    ovsdb: str = DEFAULT_OVSDB  # Open vSwitch's database, for plugstrip/ovs
    ovs_datapath: str | None = None  # system or netdev (default: what the kernel has)
    underlay_mtu: int = 1500
    advertise: IPAddress | None = None  # where other hosts send VXLAN to


def make_drivers(settings: DriverSettings = DriverSettings()) -> dict[str, Driver]:
    """Every driver, made (nothing is opened until a driver is used; ``close`` each)."""
    drivers: tuple[Driver, ...] = (
        WeaveDriver(local=settings.advertise, underlay_mtu=settings.underlay_mtu),
        OvsDriver(
            Ovsdb(settings.ovsdb),
            datapath_type=settings.ovs_datapath,
            underlay_mtu=settings.underlay_mtu,
        ),
    )
    return {d.name: d for d in drivers}
