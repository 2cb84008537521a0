"""The kernel WireGuard module's generic-netlink API, as pyroute2 speaks it (``wgmsg``).

Three parts, kept apart so that the first two run without a kernel:

* ``set_messages``: a ``SetRequest`` (the one control path, ``pyralog.link.control``)
  checked and translated into ``WG_CMD_SET_DEVICE`` messages, plain data in the shape
  pyroute2's ``wgmsg`` encodes (``{"cmd", "version", "attrs": [[NAME, value], ...]}``).
  ``to_wgmsg`` / ``encode`` turn one into pyroute2's message (``encode`` into bytes).
* ``parse_peers`` / ``parse_listen_port``: a decoded ``WG_CMD_GET_DEVICE`` dump read back
  (a dump spans several messages when the peers do not fit in one; a peer whose allowed
  IPs do not fit continues, under the same public key, in the next message).
* ``WireGuardNetlink`` (send and dump over a pyroute2 ``WireGuard`` socket) and
  ``NetlinkPeers`` (``address -> public key`` over netlink, like ``UapiPeers`` over UAPI).

Untested against a real kernel: these machines have no WireGuard module. The tests encode
every message with pyroute2's classes and decode it back, and check the byte layout of the
socket addresses against the kernel's ``struct sockaddr_in``/``sockaddr_in6``.

Splitting. pyroute2 packs whatever it is given into one message (and its ``WireGuard.set``
takes one peer), but a netlink attribute's length is 16 bits, so one ``WGDEVICE_A_PEERS``
or ``WGPEER_A_ALLOWEDIPS`` nest cannot exceed 64 KiB, and the socket's send buffer bounds
a message too. ``set_messages`` therefore packs a change into messages of at most
``MESSAGE_LIMIT`` bytes, the way ``wg(8)`` does: device attributes (``REPLACE_PEERS``,
private key, fwmark) in the first message only; peers in order; a peer whose allowed IPs
overflow continues in the next message with its public key and ``WGPEER_F_UPDATE_ONLY`` if
it had it, never again ``WGPEER_F_REPLACE_ALLOWEDIPS`` (that would drop the first part).
A new listen port goes alone in a message ahead of the rest: the port is the one change
the kernel can refuse for reasons outside the request (``EADDRINUSE``), and alone it
fails before anything changed. The kernel applies each message by itself, so a change
split in several is not atomic if a later message fails (see ``NetlinkSetError``).
"""

from __future__ import annotations

import base64
import concurrent.futures
import copy
import errno
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP_INTR, NLM_F_REQUEST
from pyroute2.netlink.generic.wireguard import (
    WG_CMD_SET_DEVICE,
    WG_GENL_VERSION,
    WGDEVICE_F_REPLACE_PEERS,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    WGPEER_F_UPDATE_ONLY,
    wgmsg,
)

from pyralog.link.control import PeerChange, SetRequest, invalid, validate
from pyralog.mesh.backend import PeerStatus
from pyralog.net.peers import CachedPeers
from pyralog.wireguard.allowedips import AllowedIPs
from pyralog.wireguard.device import Device
from pyralog.wireguard.endpoint import Endpoint, canonical_host
from pyralog.wireguard.keys import PrivateKey, PublicKey

Message = dict[str, Any]  # {"cmd": int, "version": int, "attrs": [[name, value], ...]}
Attr = list[Any]  # [NAME, value], as pyroute2 takes attributes

MESSAGE_LIMIT = 32768  # bytes per message: half the 16-bit nest length, far below sndbuf
MIN_MESSAGE_LIMIT = 512  # room for the device attributes, a peer's head and one allowed IP
_GENL_HEADER = 16 + 4  # struct nlmsghdr + struct genlmsghdr
_ZERO_KEY = base64.b64encode(bytes(32)).decode()


# -- SetRequest -> WG_CMD_SET_DEVICE messages ------------------------------------------------


def _nla(payload: int) -> int:
    """Bytes one attribute takes in a message: its 4-byte header and padded payload."""
    return 4 + ((payload + 3) & ~3)


def _key(name: str, raw: bytes) -> tuple[Attr, int]:
    return [name, base64.b64encode(raw).decode()], _nla(32)


def _u32(name: str, value: int) -> tuple[Attr, int]:
    return [name, value], _nla(4)


def _u16(name: str, value: int) -> tuple[Attr, int]:
    return [name, value], _nla(2)


def _scope_swapped(value: int) -> int:
    """pyroute2 packs ``sin6_scope_id`` big-endian, the kernel reads it in host order: the
    value that makes pyroute2 put the host-order bytes on the wire (and its inverse)."""
    return int.from_bytes(struct.pack("=I", value), "big")


def _scope_id(key: PublicKey, scope: str) -> int:
    if scope.isdigit():
        return int(scope)
    try:
        return socket.if_nametoindex(scope)
    except OSError:
        raise invalid(f"peer {key}: endpoint scope {scope!r} is not an interface here") from None


def _endpoint(key: PublicKey, endpoint: Endpoint) -> tuple[Attr, int]:
    host, port = endpoint
    address, _, scope = host.partition("%")
    if ipaddress.ip_address(address).version == 4:
        return ["WGPEER_A_ENDPOINT", {"addr": address, "port": port}], _nla(16)
    value = {
        "addr": address,
        "port": port,
        "flowinfo": 0,
        "scope_id": _scope_swapped(_scope_id(key, scope) if scope else 0),
    }
    return ["WGPEER_A_ENDPOINT", value], _nla(28)


def _allowed_ip(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[dict, int]:
    family = socket.AF_INET if network.version == 4 else socket.AF_INET6
    packed = network.network_address.packed
    attrs = [
        ["WGALLOWEDIP_A_FAMILY", family],
        ["WGALLOWEDIP_A_IPADDR", packed],
        ["WGALLOWEDIP_A_CIDR_MASK", network.prefixlen],
    ]
    return {"attrs": attrs}, 4 + _nla(2) + _nla(len(packed)) + _nla(1)


class _Packer:
    """Fills messages of at most ``limit`` bytes (see the module docstring)."""

    def __init__(self, interface: str, limit: int, device: list[tuple[Attr, int]]) -> None:
        self.interface = interface
        self.limit = limit
        self.messages: list[Message] = []
        self._open(device)

    def _open(self, device: list[tuple[Attr, int]]) -> None:
        self._attrs: list[Attr] = [["WGDEVICE_A_IFNAME", self.interface]]
        self._attrs += [a for a, _ in device]
        self._device = bool(device)
        self._peers: list[dict] = []
        self._size = _GENL_HEADER + _nla(len(self.interface.encode()) + 1)
        self._size += sum(s for _, s in device)

    def flush(self) -> None:
        if not self._device and not self._peers:
            return
        attrs = self._attrs + ([["WGDEVICE_A_PEERS", self._peers]] if self._peers else [])
        self.messages.append({"cmd": WG_CMD_SET_DEVICE, "version": WG_GENL_VERSION, "attrs": attrs})
        self._open([])

    def add_peer(
        self, head: list[tuple[Attr, int]], continued_flags: int, ips: list[tuple[dict, int]]
    ) -> None:
        """``head``: the peer's attributes, its public key first; ``ips``: its allowed IPs,
        spread over as many messages as they need."""
        attrs, i = head, 0
        while True:
            nest = 0 if self._peers else 4  # the WGDEVICE_A_PEERS header, once a message
            room = self.limit - self._size - nest
            fixed = 4 + sum(s for _, s in attrs)
            if fixed + (4 + ips[i][1] if i < len(ips) else 0) > room:
                if not self._device and not self._peers:  # an empty message: cannot happen
                    raise ValueError(f"message limit {self.limit} too small for one peer")
                self.flush()
                continue
            used, taken = fixed, []
            if i < len(ips):
                used += 4  # the WGPEER_A_ALLOWEDIPS header
                while i < len(ips) and used + ips[i][1] <= room:
                    taken.append(ips[i][0])
                    used += ips[i][1]
                    i += 1
            peer = [a for a, _ in attrs] + ([["WGPEER_A_ALLOWEDIPS", taken]] if taken else [])
            self._peers.append({"attrs": peer})
            self._size += nest + used
            if i >= len(ips):
                return
            self.flush()
            attrs = [head[0], _u32("WGPEER_A_FLAGS", continued_flags)]


def _peer(packer: _Packer, change: PeerChange) -> None:
    key = change.public_key
    public = _key("WGPEER_A_PUBLIC_KEY", key.raw)
    if change.remove:
        packer.add_peer([public, _u32("WGPEER_A_FLAGS", WGPEER_F_REMOVE_ME)], 0, [])
        return
    continued = WGPEER_F_UPDATE_ONLY if change.update_only else 0
    flags = continued | (WGPEER_F_REPLACE_ALLOWEDIPS if change.replace_allowed_ips else 0)
    head = [public, _u32("WGPEER_A_FLAGS", flags)]
    if change.preshared_key is not None:
        head.append(_key("WGPEER_A_PRESHARED_KEY", change.preshared_key.raw))
    if change.endpoint is not None:
        head.append(_endpoint(key, change.endpoint))
    if change.persistent_keepalive is not None:
        head.append(_u16("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", change.persistent_keepalive))
    ips = [_allowed_ip(n) for n in change.allowed_ips]
    packer.add_peer(head, continued, ips)


def set_messages(
    interface: str,
    change: SetRequest,
    *,
    own_key: PrivateKey | None = None,
    limit: int = MESSAGE_LIMIT,
) -> list[Message]:
    """``change`` as ``WG_CMD_SET_DEVICE`` messages for ``interface``, in sending order.

    Checks the whole request first, as ``pyralog.link.control.validate`` does for a Device
    whose private key is ``own_key`` (the interface's current one), and raises
    ``ConfigChangeError`` before building anything. Normalizes ``change`` in place like
    ``validate``. A request that changes nothing gives no message."""
    if limit < MIN_MESSAGE_LIMIT:
        raise ValueError(f"message limit must be at least {MIN_MESSAGE_LIMIT}, got {limit}")
    validate(Device(own_key), change)  # validate reads the Device's private key only
    messages: list[Message] = []
    if change.listen_port is not None:
        port = _u16("WGDEVICE_A_LISTEN_PORT", change.listen_port)[0]
        messages.append(
            {
                "cmd": WG_CMD_SET_DEVICE,
                "version": WG_GENL_VERSION,
                "attrs": [["WGDEVICE_A_IFNAME", interface], port],
            }
        )
    device: list[tuple[Attr, int]] = []
    if change.replace_peers:
        device.append(_u32("WGDEVICE_A_FLAGS", WGDEVICE_F_REPLACE_PEERS))
    if change.clear_private_key:
        device.append((["WGDEVICE_A_PRIVATE_KEY", _ZERO_KEY], _nla(32)))  # zero: no key
    elif change.private_key is not None:
        device.append(_key("WGDEVICE_A_PRIVATE_KEY", change.private_key.raw))
    if change.fwmark is not None:
        device.append(_u32("WGDEVICE_A_FWMARK", change.fwmark))
    packer = _Packer(interface, limit, device)
    for peer in change.peers:
        _peer(packer, peer)
    packer.flush()
    return messages + packer.messages


def is_listen_port_only(message: Message) -> bool:
    """Whether ``message`` is the lone listen-port message ``set_messages`` puts first."""
    return [a[0] for a in message["attrs"]] == ["WGDEVICE_A_IFNAME", "WGDEVICE_A_LISTEN_PORT"]


def to_wgmsg(message: Message) -> wgmsg:
    """A fresh pyroute2 message for ``message`` (pyroute2 rewrites the attribute list it
    encodes, so ``message`` itself is copied, never handed over)."""
    msg = wgmsg()
    msg["cmd"] = message["cmd"]
    msg["version"] = message["version"]
    msg["attrs"] = copy.deepcopy(message["attrs"])
    return msg


def encode(message: Message, *, family: int = 0, flags: int = NLM_F_REQUEST | NLM_F_ACK) -> bytes:
    """The bytes of ``message`` as pyroute2 sends them (``family``: the generic-netlink
    family id the kernel gave ``wireguard``; the socket fills it in when sending)."""
    msg = to_wgmsg(message)
    msg["header"]["type"] = family
    msg["header"]["flags"] = flags
    msg.encode()
    return bytes(msg.data)


def decode(data: bytes) -> wgmsg:
    msg = wgmsg(data)
    msg.decode()
    return msg


# -- WG_CMD_GET_DEVICE replies -> PeerStatus ---------------------------------------------------


class DumpInterrupted(OSError):
    """The peers changed during a dump (NLM_F_DUMP_INTR): the replies are inconsistent."""

    def __init__(self) -> None:
        super().__init__(errno.EINTR, "WireGuard dump interrupted by a concurrent change")


def _check_consistent(messages: Sequence[wgmsg]) -> None:
    if any(m["header"]["flags"] & NLM_F_DUMP_INTR for m in messages):
        raise DumpInterrupted()


def _parse_endpoint(value: Any) -> Endpoint | None:
    family = value.get("family")
    if family == socket.AF_INET:
        return canonical_host(value["addr"]), value["port"]
    if family == socket.AF_INET6:
        host = value["addr"]
        scope = _scope_swapped(value.get("scope_id") or 0)
        if scope:
            try:
                host = f"{host}%{socket.if_indextoname(scope)}"
            except OSError:
                host = f"{host}%{scope}"
        return canonical_host(host), value["port"]
    return None


def _parse_allowed_ip(entry: Any) -> str:
    text = entry.get("addr")
    if text is None:  # pyroute2 fills "addr" in when it decodes; do it by hand otherwise
        family = entry.get_attr("WGALLOWEDIP_A_FAMILY")
        raw = bytes.fromhex(entry.get_attr("WGALLOWEDIP_A_IPADDR").replace(":", ""))
        text = f"{socket.inet_ntop(family, raw)}/{entry.get_attr('WGALLOWEDIP_A_CIDR_MASK')}"
    return str(ipaddress.ip_network(text, strict=False))


def parse_peers(messages: Iterable[wgmsg]) -> list[PeerStatus]:
    """The peers in a decoded ``WG_CMD_GET_DEVICE`` dump, in the kernel's order, a peer
    continued over several messages joined into one. ``DumpInterrupted`` if the kernel
    flagged the dump inconsistent."""
    messages = list(messages)
    _check_consistent(messages)
    found: list[dict[str, Any]] = []
    for message in messages:
        for peer in message.get_attr("WGDEVICE_A_PEERS") or ():
            key = PublicKey(base64.b64decode(peer.get_attr("WGPEER_A_PUBLIC_KEY")))
            ips = [_parse_allowed_ip(e) for e in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ()]
            if found and found[-1]["public_key"] == key:  # continued from the last message
                found[-1]["allowed_ips"] += ips
                continue
            endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
            handshake = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
            seconds = handshake["tv_sec"] + handshake["tv_nsec"] / 1e9 if handshake else 0
            found.append(
                {
                    "public_key": key,
                    "endpoint": _parse_endpoint(endpoint) if endpoint is not None else None,
                    "allowed_ips": ips,
                    "last_handshake": seconds or None,
                    "rx_bytes": peer.get_attr("WGPEER_A_RX_BYTES") or 0,
                    "tx_bytes": peer.get_attr("WGPEER_A_TX_BYTES") or 0,
                    "persistent_keepalive": (
                        peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or 0
                    ),
                }
            )
    return [PeerStatus(**{**p, "allowed_ips": tuple(p["allowed_ips"])}) for p in found]


def parse_listen_port(messages: Iterable[wgmsg]) -> int | None:
    for message in messages:
        port = message.get_attr("WGDEVICE_A_LISTEN_PORT")
        if port is not None:
            return int(port)
    return None


# -- the socket ------------------------------------------------------------------------------


class NetlinkSetError(OSError):
    """The kernel refused message ``index`` (0-based) of a change; the ``index`` messages
    before it were applied, and the refused one may be in part (the kernel stops at the
    first peer it cannot set)."""

    def __init__(self, code: int, message: str, index: int, count: int) -> None:
        super().__init__(code, message)
        self.index = index
        self.count = count


class ModuleMissingError(OSError):
    """No kernel WireGuard module; the message says so and what to do instead."""


def module_missing_error(detail: str) -> ModuleMissingError:
    return ModuleMissingError(
        errno.ENOENT,
        f"kernel WireGuard module not loaded ({detail}): load it with 'modprobe wireguard', "
        'or set [wireguard] backend = "userspace" or "embedded"',
    )


class WireGuardNetlink:
    """``WG_CMD_SET_DEVICE`` and ``WG_CMD_GET_DEVICE`` on one interface, over pyroute2's
    ``WireGuard`` socket (one per call: pyroute2 sockets run their own event loop and
    belong to the thread that made them). Blocking: call from a worker thread, never from
    a thread running an asyncio loop."""

    def __init__(self, interface: str) -> None:
        self.interface = interface

    def _socket(self) -> Any:
        from pyroute2 import WireGuard
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            return WireGuard()  # resolves the "wireguard" generic-netlink family
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                raise module_missing_error("no generic netlink family 'wireguard'") from None
            raise OSError(e.code, f"WireGuard netlink socket: {e}") from None

    def set(self, messages: Sequence[Message]) -> None:
        """Send ``messages`` in order, each acknowledged before the next; the first refusal
        raises ``NetlinkSetError``."""
        if not messages:
            return
        from pyroute2.netlink.exceptions import NetlinkError

        with self._socket() as wg:
            for index, message in enumerate(messages):
                try:
                    wg.nlm_request(
                        to_wgmsg(message), msg_type=wg.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK
                    )
                except NetlinkError as e:
                    raise NetlinkSetError(
                        e.code,
                        f"{self.interface}: message {index + 1} of {len(messages)} refused: "
                        f"{e.args[1] if len(e.args) > 1 else e}",
                        index,
                        len(messages),
                    ) from None

    def dump(self, *, attempts: int = 3) -> list[wgmsg]:
        """The interface's ``WG_CMD_GET_DEVICE`` replies, re-read if the peers changed
        during the dump."""
        from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError

        with self._socket() as wg:
            for _ in range(attempts):
                try:
                    replies = list(wg.info(self.interface))
                except NetlinkDumpInterrupted:
                    continue
                except NetlinkError as e:
                    if e.code == errno.ENODEV:
                        raise OSError(
                            e.code, f"no WireGuard interface named {self.interface!r}"
                        ) from None
                    raise OSError(e.code, f"{self.interface}: WireGuard dump: {e}") from None
                try:
                    _check_consistent(replies)
                except DumpInterrupted:
                    continue
                return replies
        raise OSError(errno.EINTR, f"{self.interface}: dump interrupted {attempts} times")


class NetlinkPeers(CachedPeers):
    """``PeerDirectory`` of a kernel WireGuard interface, read over netlink.

    Caches like ``UapiPeers``: the table is re-read when older than ``ttl``, and on a miss
    at most every ``MISS_INTERVAL``. Fails closed: if the interface cannot be read,
    ``peer_of`` raises OSError (naming the interface) rather than answering "no peer".
    ``peer_of`` is synchronous and may be called from an event loop's thread, where
    pyroute2 cannot run: the read goes to a worker thread of this object's own, and the
    caller waits at most ``timeout`` seconds. ``read`` replaces the netlink dump (tests)."""

    def __init__(
        self,
        interface: str,
        *,
        ttl: float = 1.0,
        timeout: float = 2.0,
        read: Callable[[], Sequence[wgmsg]] | None = None,
    ) -> None:
        super().__init__(ttl)
        self.interface = interface
        self.timeout = timeout
        self._read = read
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def refresh(self) -> None:
        """Re-read the interface's peers (OSError if it cannot be read)."""
        try:
            peers = parse_peers(self._dump())
        except OSError as e:
            reason = e.strerror or str(e)
            raise OSError(e.errno, f"cannot read the peers of {self.interface}: {reason}") from None
        except concurrent.futures.TimeoutError:
            raise OSError(
                errno.ETIMEDOUT, f"cannot read the peers of {self.interface}: netlink timed out"
            ) from None
        table: AllowedIPs[PublicKey] = AllowedIPs()
        for peer in peers:
            for network in peer.allowed_ips:
                table.insert(ipaddress.ip_network(network), peer.public_key)
        self._replace(table)

    def _dump(self) -> Sequence[wgmsg]:
        if self._read is not None:
            return self._read()
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netlink")
        netlink = WireGuardNetlink(self.interface)
        return self._pool.submit(netlink.dump).result(timeout=self.timeout)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
