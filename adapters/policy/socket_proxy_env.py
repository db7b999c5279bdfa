"""docker-socket-proxy's environment variables, read as the policy's options.

Tecnativa/docker-socket-proxy (HAProxy) lets a request through when its method is GET or
HEAD or ``POST=1``, and then its path (URL-decoded, after an optional version) starts
with an API section whose variable is 1; ``ALLOW_START``, ``ALLOW_STOP`` and
``ALLOW_RESTARTS`` let those container actions through without ``CONTAINERS``. The
defaults are its own: ``EVENTS``, ``PING`` and ``VERSION`` on, everything else off.
plugstrip matches the section as a whole path segment (``/containers`` and below, not
``/containersfoo``; the daemon answers neither the same), and on top of the sections it
checks request bodies (the policy's rules) unless told not to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SECTIONS = (
    "AUTH BUILD COMMIT CONFIGS CONTAINERS DISTRIBUTION EVENTS EXEC GRPC IMAGES INFO NETWORKS"
    " NODES PING PLUGINS SECRETS SERVICES SESSION SWARM SYSTEM TASKS VERSION VOLUMES".split()
)
_ON_BY_DEFAULT = {"EVENTS", "PING", "VERSION"}
_ACTIONS = {
    "ALLOW_START": ("start",),
    "ALLOW_STOP": ("stop",),
    "ALLOW_RESTARTS": ("stop", "restart", "kill"),
}
# With body checks off, nothing but the sections is checked.
_POWERS_ALLOWED = {
    "privileged": True,
    "host_namespaces": True,
    "cap_add": ["ALL"],
    "devices": True,
    "security_opt": True,
    "bind_mounts": None,
    "exec_root": True,
}


def on(environ: Mapping[str, str], name: str) -> bool:
    """HAProxy's ``-m bool`` on the variable: a non-zero number (plugstrip also reads
    true/yes/on)."""
    value = environ.get(name)
    if value is None:
        return name in _ON_BY_DEFAULT
    value = value.strip().lower()
    if value in ("true", "yes", "on"):
        return True
    try:
        return int(value) != 0
    except ValueError:
        return False


def policy_options(environ: Mapping[str, str], body_checks: bool = True) -> dict[str, Any]:
    """The policy options equivalent to docker-socket-proxy run with ``environ``."""
    methods = ["*"] if on(environ, "POST") else ["GET", "HEAD"]
    allow = [
        f"{method} /{'_ping' if name == 'PING' else name.lower()}/**"
        for name in SECTIONS
        if on(environ, name)
        for method in methods
    ]
    if on(environ, "POST"):
        actions = sorted({a for var, acts in _ACTIONS.items() if on(environ, var) for a in acts})
        allow += [f"POST /containers/*/{action}" for action in actions]
    options: dict[str, Any] = {
        "allow": allow,
        "services": on(environ, "SERVICES"),
        "swarm": on(environ, "SWARM"),
        "plugins": on(environ, "PLUGINS"),
    }
    if not body_checks:
        options.update(_POWERS_ALLOWED, services=True, swarm=True, plugins=True)
    return options
