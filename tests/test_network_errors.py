"""Each kind of network refusal reaches the client with Docker's status for it."""

from __future__ import annotations

import pytest

from plugstrip.adapters.network.routing import refusal
from plugstrip.netdrivers.control.service import PolicyUnavailable, UnknownDriver
from plugstrip.netdrivers.datapath.ovsdb import OvsdbUnavailable
from plugstrip.netdrivers.domain import errors
from plugstrip.netdrivers.domain.errors import NetworkError
from plugstrip.netdrivers.stores.etcd import StoreUnavailable

pytestmark = pytest.mark.unit

DOCKER_STATUS = {
    errors.Invalid: 400,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Exhausted: 409,
    errors.Unavailable: 503,
}


def test_every_kind_has_a_status() -> None:
    # a kind added to errors without a status fails here, not at a client's request
    assert set(NetworkError.__subclasses__()) == set(DOCKER_STATUS)
    for kind, status in DOCKER_STATUS.items():
        answer = refusal(kind("why"))
        assert (answer.status, answer.message) == (status, "why")


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (UnknownDriver("x", ["plugstrip/weave"]), 400),
        (StoreUnavailable("etcd away"), 503),
        (OvsdbUnavailable("no ovsdb"), 503),
        (PolicyUnavailable("no nft"), 503),
    ],
)
def test_the_drivers_and_stores_refusals_are_kinds(exc: NetworkError, status: int) -> None:
    assert refusal(exc).status == status
    assert isinstance(exc, ConnectionError) == (status == 503)  # callers that catch it still do
