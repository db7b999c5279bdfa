"""The configuration file: Powerstrip's format, our extensions, and clear errors."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from plugstrip.proxy.config import ConfigError, parse

POWERSTRIP_EXAMPLE = """
endpoints:
  "POST /*/containers/create":
    pre: [adapter1, adapter2]
    post: [adapter3]
adapters:
  adapter1: http://adapter1/adapter
  adapter2: http://adapter2/adapter
  adapter3: http://adapter3/adapter
"""


def test_powerstrip_file_unchanged() -> None:
    config = parse(POWERSTRIP_EXAMPLE)
    (ep,) = config.endpoints
    assert ep.pre == ("adapter1", "adapter2") and ep.post == ("adapter3",)
    assert ep.route.matches("POST", "/v1.16/containers/create")
    spec = config.adapters["adapter1"]
    assert (spec.kind, spec.target, spec.timeout, spec.on_failure) == (
        "remote",
        "http://adapter1/adapter",
        10.0,
        "refuse",
    )


def test_extensions() -> None:
    config = parse("""
version: 1
defaults: {timeout: 3, on_failure: skip}
endpoints:
  "* /**": {pre: [p], post: [a, far]}
adapters:
  p: {use: policy, options: {read_only: true}, on_failure: refuse}
  a: {python: "pkg.mod:Audit", timeout: 0.5}
  far: {url: "http+unix://%2Frun%2Fx.sock/hook"}
""")
    p, a, far = (config.adapters[n] for n in ("p", "a", "far"))
    assert (p.kind, p.target, p.options, p.timeout, p.on_failure) == (
        "entrypoint",
        "policy",
        {"read_only": True},
        3.0,
        "refuse",
    )
    assert (a.kind, a.timeout, a.on_failure) == ("python", 0.5, "skip")
    assert far.kind == "remote"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 2", "version: expected 1"),
        ("endpoints: []", "endpoints: expected a mapping"),
        ("bogus: 1", "unknown key(s) bogus"),
        ('endpoints: {"POST /x": {pre: [ghost]}}', "no adapter named 'ghost'"),
        ('endpoints: {"POST /x": {pre: [no]}}\nadapters: {"no": http://x/}', "quote the name"),
        ('endpoints: {"YEET /x": {}}', "unknown method"),
        ("adapters: {a: ftp://x}", "expected an http://, https:// or http+unix:// URL"),
        ("adapters: {a: {url: http://x, python: m:C}}", "exactly one of url, python, use"),
        ("adapters: {a: {use: policy, timeout: -1}}", "positive number of seconds"),
        ("adapters: {a: {use: policy, on_failure: maybe}}", "one of refuse, skip"),
        ("adapters: {a: {url: http://x, options: {k: 1}}}", "takes no options"),
        ("adapters: {a: {use: policy, colour: red}}", "unknown key(s) colour"),
        ('endpoints: {"POST /x": {pre: [a]', "not valid YAML"),
    ],
)
def test_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert message in str(info.value)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.dictionaries(
        st.sampled_from(["version", "endpoints", "adapters", "defaults", "x"]),
        yaml_values,
        max_size=4,
    )
)
def test_any_document_parses_or_fails_with_config_error(doc: dict[str, object]) -> None:
    try:
        parse(yaml.safe_dump(doc))
    except ConfigError:
        pass
