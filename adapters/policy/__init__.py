"""The policy adapter: per-client rule sets (``rules``), ownership of objects
(``ownership``) and docker-socket-proxy's variables read as its options
(``socket_proxy_env``), composed in ``adapter``."""

from plugstrip.adapters.policy.adapter import PolicyAdapter

__all__ = ["PolicyAdapter"]
