"""The policy adapter: per-client rule sets (``rules``), the class of every field of the
Engine API's bodies and answers and the walk over them (``fields``, ``fields.yaml``), each
power's check (``powers``, with ``runc`` for values as runc reads them), ownership of
objects and references (``ownership``) and of what answers show (``answers``), and
docker-socket-proxy's variables read as its options (``socket_proxy_env``), composed in
``adapter``."""

from plugstrip.adapters.policy.adapter import PolicyAdapter

__all__ = ["PolicyAdapter"]
