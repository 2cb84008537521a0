"""Endpoints: the one ``(host, port)`` shape every layer uses for a peer's UDP address.

The Device compares endpoints to notice roaming, so one address must have one spelling:
IP literals are canonical (``str(ipaddress.ip_address(...))``: lower-case IPv6, zeros
compressed, an IPv4-mapped IPv6 address as plain IPv4, a scoped host keeps ``%scope``),
exactly as the UDP layer reports the sources of datagrams. Host names (allowed only where
a config file names a server, and resolved before the Device sees them) stay as written.

Text forms: ``192.0.2.1:51820``, ``[2001:db8::1]:51820``, ``[fe80::1%eth0]:51820``, and
with ``allow_names`` ``server.example.net:51820``.
"""

from __future__ import annotations

import ipaddress

Endpoint = tuple[str, int]


class EndpointError(ValueError):
    """Text that is not an endpoint; the message quotes it and says what was wrong."""


def canonical_host(host: str) -> str:
    """The canonical spelling of an IP literal (ValueError if ``host`` is none)."""
    address, _, scope = host.partition("%")
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return f"{parsed}%{scope}" if scope else str(parsed)


def canonical(host: str, port: int) -> Endpoint:
    """A socket address as the Device sees endpoints (see the module docstring)."""
    return canonical_host(host), port


def parse_endpoint(value: str, *, allow_names: bool = False) -> Endpoint:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> ``(host, port)``, canonical for IP literals."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise EndpointError(f"endpoint {value!r}: expected [IPv6]:PORT")
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise EndpointError(f"endpoint {value!r}: expected HOST:PORT")
        if ":" in host:
            raise EndpointError(f"endpoint {value!r}: put IPv6 addresses in brackets, [addr]:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise EndpointError(f"endpoint {value!r}: port {port!r} is not 1-65535")
    try:
        parsed = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        if not allow_names or value.startswith("["):
            raise EndpointError(f"endpoint {value!r}: {host!r} is not an IP address") from None
        return host, int(port)
    if value.startswith("[") != (parsed.version == 6):
        raise EndpointError(f"endpoint {value!r}: only IPv6 addresses go in brackets")
    return canonical_host(host), int(port)


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint[0], endpoint[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
