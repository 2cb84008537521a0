"""A userspace IPv4/IPv6 + ICMP + UDP + TCP stack, so a process can use a WireGuard tunnel
without root or TUN (embedded mode).

Written by hand because no maintained Python library implements a TCP/IP stack that can
be driven packet by packet: the stack is sans-IO like the WireGuard core (it consumes IP
packets and ``now`` and produces IP packets and deadlines), with an asyncio front end.
"""
