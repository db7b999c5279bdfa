"""The built-in network adapter: plugstrip networks through the unchanged Docker API.

It answers the network calls for plugstrip's own drivers itself (:mod:`.networks`), adds
plugstrip networks to Docker's answers, and turns a container create on a plugstrip
network into a network-holder container wired up first plus the user's container joining
it (:mod:`.containers`, :mod:`.holder`). The holders' state lives in one class
(:mod:`.holder_life`); :mod:`.events` follows the daemon and reconciles. Docker-API shapes
stop here: the control plane below (``NetworkService``) takes plain typed intent.

Address life follows the daemon: addresses belong to a holder, which lives as long as its
container; removals made anywhere (``docker rm``, ``--rm``, directly on the daemon) arrive
on the event stream, and on start-up (and after the stream drops) a reconciliation frees
what belongs to no container and re-plugs holders the daemon restarted.
"""

from plugstrip.adapters.network.adapter import NetworkAdapter

__all__ = ["NetworkAdapter"]
