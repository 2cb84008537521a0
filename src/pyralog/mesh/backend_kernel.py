"""The kernel backend: the Linux kernel's WireGuard module, configured over netlink.

``KernelBackend.start`` creates the interface (rtnetlink, pyroute2's ``IPRoute``), gives it
its private key and listen port (WireGuard's generic netlink, pyroute2's ``WireGuard``
socket and ``wgmsg`` messages, see ``pyralog.mesh.wgnetlink``), its MTU, addresses and
routes, and brings it up. ``apply`` checks a ``SetRequest`` whole and sends it as
``WG_CMD_SET_DEVICE`` messages; ``peers`` reads ``WG_CMD_GET_DEVICE`` back; ``network`` is
a ``KernelNetwork`` on the interface's addresses whose ``peer_of`` reads the peers over
netlink (``NetlinkPeers``); ``close`` deletes the interface.

UNTESTED AGAINST A REAL KERNEL: the machines this was written on have no WireGuard module
(``/sys/module/wireguard`` does not exist), so no interface was ever created. What is
tested (tests/mesh/test_backend_kernel.py): the translation of SetRequests into netlink
messages, encoded with pyroute2's classes and decoded back (keys, port, fwmark, flags,
endpoints of both families with the kernel's sockaddr layout, PSKs, keepalives, allowed
IPs, the splitting of large changes), refusals of bad input with nothing sent, the
parsing of encoded dump replies, the backend's bookkeeping over a fake netlink, and that
``start`` without the module fails with a ``BackendError`` that says so.

pyroute2 runs its own asyncio loop, which cannot start inside a running one: every
netlink call happens in a worker thread (``asyncio.to_thread``).

Limitations: a change split over several netlink messages (more than ``MESSAGE_LIMIT``
bytes, about 500 peers with one allowed IP each) is not atomic if the kernel refuses a
later message (``BackendError`` says how far it got); ``rekey`` is not supported, since
the kernel has no command to start a handshake (it rekeys on its own timers).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
from collections.abc import Sequence
from typing import Any, Protocol

from pyralog.link.control import ConfigChangeError, SetRequest
from pyralog.mesh.backend import (
    BackendError,
    BackendSpec,
    PeerStatus,
    kernel_available,
    rekey_request,
    set_ip_forwarding,
)
from pyralog.mesh.wgnetlink import (
    MESSAGE_LIMIT,
    Message,
    ModuleMissingError,
    NetlinkPeers,
    NetlinkSetError,
    WireGuardNetlink,
    is_listen_port_only,
    module_missing_error,
    parse_listen_port,
    parse_peers,
    set_messages,
)
from pyralog.net.kernel import KernelNetwork
from pyralog.wireguard.keys import PrivateKey, PublicKey

IFNAMSIZ = 16  # the kernel's limit, with the terminating NUL


class DeviceNetlink(Protocol):
    """The WireGuard generic-netlink calls the backend makes (``WireGuardNetlink``);
    blocking, called in worker threads."""

    def set(self, messages: Sequence[Message]) -> None: ...

    def dump(self) -> list[Any]: ...


class Links(Protocol):
    """The rtnetlink calls the backend makes (``IPRouteLinks``): create, configure and
    delete the interface. Blocking, called in worker threads."""

    def create(self, name: str) -> None: ...

    def configure(self, name: str, spec: BackendSpec) -> None: ...

    def delete(self, name: str) -> None: ...


class IPRouteLinks:
    """``Links`` over pyroute2's ``IPRoute`` (one socket per call, in the caller's thread)."""

    def create(self, name: str) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="wireguard")

    def configure(self, name: str, spec: BackendSpec) -> None:
        """MTU, addresses, up, then the extra routes (the mesh prefix's route comes with
        the address)."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            index = _index(ipr, name)
            ipr.link("set", index=index, mtu=spec.mtu)
            for interface in spec.addresses:
                ipr.addr(
                    "add",
                    index=index,
                    address=str(interface.ip),
                    prefixlen=interface.network.prefixlen,
                )
            ipr.link("set", index=index, state="up")
            for route in spec.routes:
                ipr.route("add", dst=str(ipaddress.ip_network(route, strict=False)), oif=index)

    def delete(self, name: str) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.link("del", index=_index(ipr, name))


def _index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise OSError(errno.ENODEV, f"no interface named {name!r}")
    return int(found[0])


def _code(e: BaseException) -> int:
    code = getattr(e, "code", None)  # pyroute2's NetlinkError
    if not isinstance(code, int):
        code = getattr(e, "errno", None)
    return code if isinstance(code, int) else errno.EIO


def _reason(e: BaseException) -> str:
    """The message of ``e`` without the errno: OSError's strerror, NetlinkError's text."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    args = getattr(e, "args", ())
    if len(args) >= 2 and isinstance(args[1], str):
        return args[1]
    return str(e) or type(e).__name__


def start_error(name: str, step: str, e: BaseException, *, creating: bool = False) -> BackendError:
    """What a failed start says, instead of a netlink traceback (``creating``: the step
    that creates the link, where a missing module shows)."""
    if isinstance(e, ModuleMissingError):
        return BackendError(e.strerror)
    code = _code(e)
    denied = code in (errno.EPERM, errno.EACCES)
    # Creating a "wireguard" link loads the module if it can; the kernel answers
    # EOPNOTSUPP for a kind it does not know. Unprivileged, it answers EPERM first.
    if creating and (code == errno.EOPNOTSUPP or (denied and not kernel_available())):
        where = "" if kernel_available() else "/sys/module/wireguard does not exist; "
        more = " (and creating an interface needs CAP_NET_ADMIN)" if denied else ""
        return BackendError(module_missing_error(f"{where}{step}: {_reason(e)}").strerror + more)
    if denied:
        return BackendError(f"kernel backend: {step} needs CAP_NET_ADMIN ({_reason(e)})")
    if creating and code == errno.EEXIST:
        return BackendError(
            f"kernel backend: interface {name} already exists (another WireGuard, or left "
            f"by an earlier run): remove it with 'ip link del {name}' or set another name"
        )
    return BackendError(f"kernel backend: {step} on {name}: {_reason(e)} (errno {code})")


def _check_spec(spec: BackendSpec) -> None:
    name = spec.interface_name
    if not name or len(name.encode()) >= IFNAMSIZ or name in (".", ".."):
        raise BackendError(f"kernel backend: interface name {name!r} must be 1-15 bytes")
    if any(c in name for c in "/: \t\n") or not name.isprintable():
        raise BackendError(f"kernel backend: interface name {name!r} has a forbidden character")
    if not spec.addresses:
        raise BackendError("kernel backend: the interface needs at least one address")
    for route in spec.routes:
        try:
            ipaddress.ip_network(route, strict=False)
        except ValueError:
            raise BackendError(f"kernel backend: route {route!r} is not ADDRESS/CIDR") from None


class KernelBackend:
    name = "kernel"

    def __init__(
        self,
        spec: BackendSpec,
        listen_port: int,
        *,
        netlink: DeviceNetlink,
        links: Links,
        peers: NetlinkPeers | None = None,
        message_limit: int = MESSAGE_LIMIT,
    ) -> None:
        """An interface already up (``start`` makes one); ``netlink`` and ``links`` reach
        the kernel (tests give fakes)."""
        self.interface = spec.interface_name
        self._private_key: PrivateKey | None = spec.private_key
        self._listen_port = listen_port
        self._netlink = netlink
        self._links = links
        self._message_limit = message_limit
        self._peers = peers if peers is not None else NetlinkPeers(self.interface)
        self._network = KernelNetwork(
            [a.ip for a in spec.addresses], self._peers, interface=self.interface
        )
        self._closed = False

    @classmethod
    async def start(
        cls,
        spec: BackendSpec,
        *,
        netlink: DeviceNetlink | None = None,
        links: Links | None = None,
    ) -> KernelBackend:
        _check_spec(spec)
        netlink = netlink if netlink is not None else WireGuardNetlink(spec.interface_name)
        links = links if links is not None else IPRouteLinks()
        port = await asyncio.to_thread(_bring_up, spec, netlink, links)
        return cls(spec, port, netlink=netlink, links=links)

    @property
    def network(self) -> KernelNetwork:
        return self._network

    @property
    def listen_port(self) -> int:
        return self._listen_port

    def messages(self, change: SetRequest) -> list[Message]:
        """``change`` as the netlink messages ``apply`` would send (``ConfigChangeError``
        for a change that cannot be applied)."""
        return set_messages(
            self.interface, change, own_key=self._private_key, limit=self._message_limit
        )

    async def apply(self, change: SetRequest) -> None:
        messages = self.messages(change)  # checks everything before anything is sent
        if not messages:
            return
        try:
            await asyncio.to_thread(self._netlink.set, messages)
        except NetlinkSetError as e:
            if e.index == 0 and is_listen_port_only(messages[0]):
                # Alone in its message, a refused port left the interface as it was.
                raise ConfigChangeError(
                    e.errno or errno.EIO, f"listen_port {change.listen_port}: {e.strerror}"
                ) from None
            applied = f"{e.index} of {e.count} messages applied" if e.index else "none applied"
            raise BackendError(
                f"kernel backend: {e.strerror} ({applied}; the interface may hold part of "
                "the change)"
            ) from None
        except OSError as e:
            raise BackendError(f"kernel backend: {self.interface}: {_reason(e)}") from None
        if change.clear_private_key:
            self._private_key = None
        elif change.private_key is not None:
            self._private_key = change.private_key
        if change.listen_port is not None:
            self._listen_port = change.listen_port or await self._read_listen_port()

    async def _read_listen_port(self) -> int:
        try:
            replies = await asyncio.to_thread(self._netlink.dump)
        except OSError as e:
            raise BackendError(f"kernel backend: {self.interface}: {_reason(e)}") from None
        port = parse_listen_port(replies)
        if port is None:
            raise BackendError(f"kernel backend: {self.interface}: no listen port in the dump")
        return port

    async def rekey(self, peer: PublicKey) -> None:
        """The kernel has no "handshake now" either: see ``backend.rekey_request``. The
        dump gives no preshared key back here, so a peer with a PSK loses it: only the
        coordinator peer (which has none) is rekeyed today. Untested against a real
        kernel (no module on these machines)."""
        current = next((p for p in await self.peers() if p.public_key == peer), None)
        if current is None:
            return
        await self.apply(
            rekey_request(peer, current.endpoint, current.allowed_ips, current.persistent_keepalive)
        )

    async def set_forwarding(self, on: bool, allow: object = None) -> None:
        # The kernel forwards here; ``allow`` (the role policy) is not enforced on it.
        await asyncio.to_thread(set_ip_forwarding, on)

    async def peers(self) -> list[PeerStatus]:
        try:
            replies = await asyncio.to_thread(self._netlink.dump)
            return parse_peers(replies)
        except OSError as e:
            raise BackendError(f"kernel backend: {self.interface}: {_reason(e)}") from None

    async def close(self) -> None:
        """Delete the interface (its peers and addresses go with it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._peers.close()
        try:
            await asyncio.to_thread(self._links.delete, self.interface)
        except Exception as e:  # OSError, or pyroute2's NetlinkError (not an OSError)
            if _code(e) != errno.ENODEV:
                raise BackendError(
                    f"kernel backend: deleting {self.interface}: {_reason(e)}"
                ) from None


def _bring_up(spec: BackendSpec, netlink: DeviceNetlink, links: Links) -> int:
    """Create and configure the interface; delete it again if a step fails. Returns the
    listen port (the kernel's pick if ``spec.listen_port`` is 0)."""
    name = spec.interface_name
    step = f"creating the WireGuard interface {name}"
    try:
        links.create(name)
    except Exception as e:  # NetlinkError, OSError
        raise start_error(name, step, e, creating=True) from None
    try:
        step = "setting the private key and listen port"
        change = SetRequest(private_key=spec.private_key, listen_port=spec.listen_port)
        netlink.set(set_messages(name, change))
        step = "setting the MTU, addresses and routes"
        links.configure(name, spec)
        step = "reading the listen port back"
        port = parse_listen_port(netlink.dump())
        if port is None:
            raise OSError(errno.EIO, "the kernel's reply has no listen port")
    except Exception as e:
        with contextlib.suppress(Exception):
            links.delete(name)
        if isinstance(e, ConfigChangeError):
            raise BackendError(f"kernel backend: {e}") from None
        raise start_error(name, step, e) from None
    return port
