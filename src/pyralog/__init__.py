"""Pyralog: a distributed log whose every connection runs over WireGuard.

Read top-down, the packages are its layers (arrows point down only):

- ``wireguard``: the protocol, sans-IO: keys, handshake, cookies, replay window, allowed
  IPs, timers, the ``Device``; its seams for the layers above (rekey, PSK roll-over, the
  unknown-initiator policy in ``admission``, events and drop counters);
- ``udp``: batched UDP sockets (GSO/GRO);
- ``link``: the one pump between a Device and its sockets, where datagram transforms go
  (``link.transform``) and where every configuration change goes (``link.control``);
- ``tunnel``: Linux TUN, the UAPI socket, the pyralog-wg daemon;
- ``netstack``: the userspace TCP/IP stack and the embedded tunnel;
- ``net``: the network API everything above uses, over either tunnel (``peer_of`` maps
  an address to its WireGuard identity);
- ``mesh``: the control plane: ``wireguard.toml`` and the node's key so far;
- ``cli``: the command-line front ends.
"""

__version__ = "0.1.0"
