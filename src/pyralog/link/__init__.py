"""The link: the one pump between a Device and its UDP sockets, for every runtime.

- ``transform``: the ordered pipeline of sans-IO datagram transforms (stealth plugs in);
- ``pump``: ``Link``, moving datagrams between the Device, the pipeline and the sockets,
  with the timers of both;
- ``control``: the atomic configuration change (UAPI ``set`` semantics) that UAPI, the
  embedded tunnel and the mesh agent all apply through ``Link.apply``.
"""

from pyralog.link.control import ConfigChangeError, PeerChange, SetRequest
from pyralog.link.pump import Link, SocketWatcher
from pyralog.link.transform import Datagram, Pipeline, Transform

__all__ = [
    "ConfigChangeError",
    "Datagram",
    "Link",
    "PeerChange",
    "Pipeline",
    "SetRequest",
    "SocketWatcher",
    "Transform",
]
