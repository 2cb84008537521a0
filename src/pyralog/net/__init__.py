"""One network API for everything above the tunnel, whatever carries it.

``Network`` (``api``) has asyncio's own ``open_connection``, ``start_server``,
``create_connection``, ``create_server`` and ``create_datagram_endpoint``, plus
``peer_of(address)``: the WireGuard public key behind a mesh address, so a service can
authorise a connection by its peer's identity. Two implementations:

- ``KernelNetwork`` (``kernel``): kernel sockets bound to the mesh address of a TUN or
  kernel WireGuard interface (pyralog-wg, wireguard-go, the kernel module); peers are
  read from the interface's UAPI socket;
- ``EmbeddedNetwork`` (``embedded``): the in-process netstack; it is the
  ``EmbeddedTunnel`` itself, which implements the interface.

``forward`` (port forwarding, ``pyralog forward``) is written against ``Network`` only.
"""

from pyralog.net.api import Network
from pyralog.net.embedded import EmbeddedNetwork
from pyralog.net.kernel import KernelNetwork
from pyralog.net.peers import PeerDirectory, UapiPeers

__all__ = [
    "EmbeddedNetwork",
    "KernelNetwork",
    "Network",
    "PeerDirectory",
    "UapiPeers",
]
