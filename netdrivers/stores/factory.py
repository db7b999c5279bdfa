"""Which store: ``--store`` picks a backend."""

from __future__ import annotations

from pathlib import Path

from plugstrip.netdrivers.stores.sqlite import SqliteStore
from plugstrip.netdrivers.stores.store import STORE_FILE, Store


def open_store(url: str | None, state_dir: str | Path) -> Store:
    """``--store``: an ``etcd://HOST:PORT[,...]`` cluster shared by hosts, else (None) the
    embedded SQLite store in the state directory."""
    if url is None:
        return SqliteStore(Path(state_dir) / STORE_FILE)
    from plugstrip.netdrivers.stores.etcd import EtcdStore  # gRPC is loaded only when used

    return EtcdStore.from_url(url)
