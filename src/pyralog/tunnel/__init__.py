"""TUN mode: Linux TUN, the UAPI socket and the pyralog-wg daemon, around a link."""
