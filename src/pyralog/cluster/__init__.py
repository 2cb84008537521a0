"""``pyralog up``: a whole Pyralog cluster on one machine, as any user, in one command.

A coordinator and N ``pyralog node`` processes in embedded mode (WireGuard and TCP/IP
inside each process, ordinary UDP sockets on loopback: no root, no TUN), each node
enrolled with a join token, their brokers forming one replicated log cluster. The
pieces, in the order they are used:

- ``layout``: the cluster directory (what ``--dir`` holds, how it is checked before
  anything is started, the configs written on first start);
- ``restarts``: when a child that exited is started again (sans-IO);
- ``supervisor``: starts the children, enrolls the nodes, watches them, stops them;
- ``status``: what the status table shows, gathered from the local sockets;
- ``runlock``: one supervisor per directory, and how ``pyralog down`` finds it.
"""
