"""One manager runs every adapter's life cycle: built-ins and configured adapters start
and close the same way; built-ins first and last; a configuration starts whole or not at
all, and one a reload replaced closes after its grace."""

from __future__ import annotations

import asyncio

import pytest

from plugstrip.proxy.adapter_manager import AdapterManager
from plugstrip.proxy.adapter_model import BuiltIn, LoadedAdapter
from plugstrip.proxy.config import ConfigError, parse
from plugstrip.proxy.contract import Call
from plugstrip.proxy.routes import Route

EVENTS: list[str] = []


class Logged:
    def __init__(self, tag: str, fail_start: bool = False) -> None:
        self.tag = tag
        self.fail_start = fail_start

    async def start(self) -> None:
        EVENTS.append(f"start {self.tag}")
        if self.fail_start:
            raise RuntimeError("cannot start")

    def pre_hook(self, call: Call) -> None:
        pass

    def close(self) -> None:  # plain, as an adapter may have it
        EVENTS.append(f"close {self.tag}")


def config(*tags: str, failing: str = "") -> str:
    lines = [
        f'  {t}: {{python: "tests.test_adapter_manager:Logged", options: '
        f"{{tag: {t}, fail_start: {str(t == failing).lower()}}}}}"
        for t in tags
    ]
    pre = ", ".join(tags)
    return f'endpoints:\n  "* /**": {{pre: [{pre}]}}\nadapters:\n' + "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def _clear() -> None:
    EVENTS.clear()


def manager(grace: float = 60.0) -> AdapterManager:
    builtin = BuiltIn((Route.parse("* /**"),), LoadedAdapter("net", Logged("net")))
    return AdapterManager([builtin], grace=grace)


async def test_builtins_start_first_and_close_last_as_configured_adapters_do() -> None:
    adapters = manager()
    loaded = adapters.build(parse(config("a", "b")))
    assert EVENTS == []  # made, not started
    await adapters.start_builtins()
    await adapters.start(loaded)
    chain = loaded.pipeline.match("GET", "/v1.41/info")
    assert chain is not None and [a.name for a in chain.pre] == ["a", "b", "net"]
    await adapters.aclose()
    assert EVENTS == ["start net", "start a", "start b", "close b", "close a", "close net"]


async def test_a_configuration_that_fails_to_start_is_closed_and_named() -> None:
    adapters = manager()
    await adapters.start_builtins()
    with pytest.raises(ConfigError, match=r"adapters\.b: could not start: cannot start"):
        await adapters.start(adapters.build(parse(config("a", "b", "c", failing="b"))))
    assert EVENTS == ["start net", "start a", "start b", "close b", "close a"]
    await adapters.aclose()
    assert EVENTS[-1] == "close net"  # and the failed one is not closed twice
    assert EVENTS.count("close a") == 1


async def test_a_retired_configuration_closes_after_its_grace_or_at_the_end() -> None:
    adapters = manager(grace=0.05)
    await adapters.start_builtins()
    first = adapters.build(parse(config("a")))
    await adapters.start(first)
    second = adapters.build(parse(config("b")))
    await adapters.start(second)
    adapters.retire(first)
    assert "close a" not in EVENTS  # calls in flight may still use it
    await asyncio.sleep(0.2)
    assert EVENTS[-1] == "close a"
    third = adapters.build(parse(config("c")))
    await adapters.start(third)
    adapters.retire(second)  # not yet closed when plugstrip stops: closed then
    await adapters.aclose()
    assert EVENTS[-3:] == ["close c", "close b", "close net"]
    await asyncio.sleep(0.1)
    assert EVENTS.count("close b") == 1
