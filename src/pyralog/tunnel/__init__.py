"""The runtime around the sans-IO core: UDP sockets, Linux TUN, the UAPI socket, the daemon."""
