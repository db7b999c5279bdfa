"""Following the daemon: container events applied as they come, and a reconciliation at
start-up and whenever the event stream drops, so removals and restarts made anywhere
(``docker rm``, ``--rm``, the daemon restarting holders) end up in the store."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from plugstrip.adapters.network import holder
from plugstrip.adapters.network.holder_life import Holders
from plugstrip.netdrivers.control.service import NetworkService, PolicyUnavailable
from plugstrip.proxy.docker_api import DockerApi

log = logging.getLogger("plugstrip.network")


class Events:
    def __init__(self, service: NetworkService, api: DockerApi, holders: Holders) -> None:
        self.service = service
        self.api = api
        self.holders = holders
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        """Reconcile, then follow container events from that moment; again when the stream
        drops (the daemon restarted, the connection broke)."""
        while True:
            since = time.time()
            try:
                await self.reconcile()
                async for event in self.api.events(
                    {"type": ["container"], "event": ["destroy", "start"]}, since
                ):
                    await self._on_event(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event stream dropped, following again: %s", exc)
            await asyncio.sleep(1)

    async def _on_event(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        cid, attrs = str(actor.get("ID", "")), actor.get("Attributes") or {}
        action = event.get("Action")
        holders = self.holders
        try:
            if action == "destroy" and attrs.get(holder.HOLDER):
                await holders.discard(str(attrs[holder.HOLDER]))
            elif action == "destroy" and attrs.get(holder.ROLE):
                holders.pool.forget(cid)
                await holders.release(cid)
            elif action == "destroy" and await holders.owns(cid):  # in its own namespace
                await holders.release(cid)
            elif (
                action == "start"
                and attrs.get(holder.ROLE)
                and cid not in holders.pending
                and cid not in holders.pool
            ):
                async with holders.lock(cid):  # the daemon restarted a holder: a new namespace
                    await holders.replug(cid)
                await self._restart_dependents(cid)
            elif action == "start" and not attrs.get(holder.HOLDER) and not attrs.get(holder.ROLE):
                await self._plug_own(cid)
        except Exception:
            log.exception("handling %s of %s failed", action, cid[:12])

    async def _plug_own(self, cid: str) -> None:
        """A container in its own namespace started (a restart policy, a client beside
        plugstrip): plug it into its new namespace."""
        async with self.holders.lock(cid):
            if not await self.holders.owns(cid):
                return
            info = await self.api.inspect_container(cid)
            if info is not None and info["State"]["Running"]:
                await self.holders.plug_own(info)

    async def _restart_dependents(self, hid: str) -> None:
        """Start the holder's container if the daemon should have and could not: when the
        daemon restarts, it starts containers in no particular order, and one whose holder
        was not up yet fails and is not tried again. Only ``always`` is certain to be meant
        (``unless-stopped`` skips containers stopped by hand, which the API does not tell)."""
        filters = json.dumps({"label": [f"{holder.HOLDER}={hid}"]})
        listed = await self.api.call(
            "GET", "/containers/json", params={"all": "1", "filters": filters}
        )
        for c in listed:
            if c["State"] == "running":
                continue
            info = await self.api.inspect_container(c["Id"])
            if info and (info["HostConfig"].get("RestartPolicy") or {}).get("Name") == "always":
                log.info("starting %s, whose holder is back", c["Id"][:12])
                await self.api.call("POST", f"/containers/{c['Id']}/start")

    async def reconcile(self) -> None:
        """Free what belongs to no container; re-plug every running holder and container
        in its own namespace."""
        holders = self.holders
        listed = await self.api.call("GET", "/containers/json", params={"all": "1"})
        held = {c["Id"]: c for c in listed if (c.get("Labels") or {}).get(holder.ROLE)}
        used = {
            str((c.get("Labels") or {}).get(holder.HOLDER))
            for c in listed
            if (c.get("Labels") or {}).get(holder.HOLDER)
        }
        owners = await self.service.owners()
        alive = {c["Id"]: c for c in listed}
        own = owners & (set(alive) - set(held))  # containers in their own namespace
        holders.own = set(own)
        if not held and not used and not own and not holders.pending:
            holders.holding = False  # until a create, a connect or a spare says otherwise
        for hid in set(held) - used - holders.pending:
            idle = hid not in owners and held[hid]["State"] == "running"
            if hid in holders.pool or (idle and holders.pool.adopt(hid)):
                continue  # an idle holder (a spare, maybe of an earlier run): a spare
            log.info("removing orphan network holder %s", hid[:12])
            await holders.discard(hid)
        await holders.top_up_spares()
        for owner in owners - set(alive) - holders.pending:
            log.info("releasing addresses of vanished %s", owner[:12])
            await holders.release(owner)
        for cid in own:
            if alive[cid]["State"] == "running":
                with _unguardable(cid):
                    await self._plug_own(cid)
        for hid in used & set(held):
            if held[hid]["State"] == "running":
                async with holders.lock(hid):
                    with _unguardable(hid):
                        await holders.replug(hid)


@contextmanager
def _unguardable(owner: str) -> Iterator[None]:
    """An owner whose security groups cannot be enforced stays unplugged (fails closed);
    the others are plugged, and the events followed, all the same."""
    try:
        yield
    except PolicyUnavailable as exc:
        log.warning("%s not plugged in: %s", owner[:12], exc)
