"""The kernel backend without a kernel module: SetRequests translated into WireGuard
netlink messages (encoded with pyroute2's classes and decoded back), dump replies parsed,
the backend's bookkeeping over fake netlink, and a clear error where the module is
missing. Nothing here creates a real WireGuard interface."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
from base64 import b64decode, b64encode
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink import NLM_F_DUMP_INTR, NLM_F_MULTI
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic.wireguard import (
    WG_CMD_GET_DEVICE,
    WG_CMD_SET_DEVICE,
    WGDEVICE_F_REPLACE_PEERS,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    WGPEER_F_UPDATE_ONLY,
    wgmsg,
)

from pyralog.link.control import ConfigChangeError, PeerChange, SetRequest
from pyralog.mesh import backend_kernel
from pyralog.mesh.backend import BackendError, BackendSpec, kernel_available, start_backend
from pyralog.mesh.backend_kernel import KernelBackend, start_error
from pyralog.mesh.wgnetlink import (
    MESSAGE_LIMIT,
    DumpInterrupted,
    Message,
    ModuleMissingError,
    NetlinkPeers,
    NetlinkSetError,
    WireGuardNetlink,
    decode,
    encode,
    is_listen_port_only,
    parse_listen_port,
    parse_peers,
    set_messages,
)
from pyralog.net.peers import MISS_INTERVAL
from pyralog.wireguard.keys import PresharedKey, PrivateKey, PublicKey

OWN = PrivateKey(bytes([1]) * 32)
KEYS = [PrivateKey(bytes([n]) * 32).public_key for n in range(2, 12)]
PEER = KEYS[0]
PSK = PresharedKey(bytes(range(32)))
IFNAME = "wgtest0"


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def roundtrip(messages: list[Message]) -> list[wgmsg]:
    """Each message encoded with pyroute2's wgmsg and decoded back from the bytes."""
    return [decode(encode(m, family=0x1A)) for m in messages]


def build(change: SetRequest, **kw: Any) -> list[wgmsg]:
    return roundtrip(set_messages(IFNAME, change, **kw))


def names(obj: Any) -> list[str]:
    return [a[0] for a in obj["attrs"]]


def peers_in(msg: wgmsg) -> list[Any]:
    return list(msg.get_attr("WGDEVICE_A_PEERS") or ())


def key_of(peer: Any) -> PublicKey:
    return PublicKey(b64decode(peer.get_attr("WGPEER_A_PUBLIC_KEY")))


def ips_of(peer: Any) -> list[str]:
    return [e["addr"] for e in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ()]


def payload(attr: Any) -> bytes:
    """The bytes of a decoded attribute after its 4-byte header."""
    return bytes(attr.data[attr.offset + 4 : attr.offset + attr.length])


def the_attr(obj: Any, name: str) -> Any:
    """The decoded attribute itself (pyroute2's nla object), not its value."""
    (found,) = [a.nla for a in obj["attrs"] if a.name == name]
    return found


# -- device attributes ---------------------------------------------------------------------


def test_private_key_listen_port_and_fwmark() -> None:
    new = PrivateKey(bytes([9]) * 32)
    port_msg, device = build(SetRequest(private_key=new, listen_port=51820, fwmark=0x1337))
    for msg in (port_msg, device):
        assert msg["cmd"] == WG_CMD_SET_DEVICE
        assert msg["version"] == 1
        assert msg["header"]["type"] == 0x1A
        assert msg.get_attr("WGDEVICE_A_IFNAME") == IFNAME
    # The port alone, first: refused, it leaves everything as it was.
    assert names(port_msg) == ["WGDEVICE_A_IFNAME", "WGDEVICE_A_LISTEN_PORT"]
    assert port_msg.get_attr("WGDEVICE_A_LISTEN_PORT") == 51820
    assert names(device) == ["WGDEVICE_A_IFNAME", "WGDEVICE_A_PRIVATE_KEY", "WGDEVICE_A_FWMARK"]
    assert b64decode(device.get_attr("WGDEVICE_A_PRIVATE_KEY")) == new.raw
    assert device.get_attr("WGDEVICE_A_FWMARK") == 0x1337
    assert device.get_attr("WGDEVICE_A_FLAGS") is None  # no REPLACE_PEERS unless asked


def test_listen_port_alone_is_one_message() -> None:
    messages = set_messages(IFNAME, SetRequest(listen_port=0))
    assert len(messages) == 1 and is_listen_port_only(messages[0])
    (msg,) = roundtrip(messages)
    assert msg.get_attr("WGDEVICE_A_LISTEN_PORT") == 0


def test_listen_port_is_host_order_u16() -> None:
    (msg,) = build(SetRequest(listen_port=0x1234))
    attr = the_attr(msg, "WGDEVICE_A_LISTEN_PORT")
    assert payload(attr)[:2] == struct.pack("=H", 0x1234)


def test_clearing_the_private_key_sends_the_zero_key() -> None:
    (msg,) = build(SetRequest(clear_private_key=True, private_key=OWN))
    assert b64decode(msg.get_attr("WGDEVICE_A_PRIVATE_KEY")) == bytes(32)


def test_an_empty_request_sends_nothing() -> None:
    assert set_messages(IFNAME, SetRequest()) == []


def test_replace_peers_sets_the_device_flag() -> None:
    (msg,) = build(SetRequest(replace_peers=True))  # no peers: the interface ends with none
    assert msg.get_attr("WGDEVICE_A_FLAGS") == WGDEVICE_F_REPLACE_PEERS
    assert msg.get_attr("WGDEVICE_A_PEERS") is None
    (msg,) = build(SetRequest(replace_peers=True, peers=[PeerChange(PEER)]))
    assert msg.get_attr("WGDEVICE_A_FLAGS") == WGDEVICE_F_REPLACE_PEERS
    assert [key_of(p) for p in peers_in(msg)] == [PEER]


# -- peers -----------------------------------------------------------------------------------


def test_add_peer_with_ipv4_endpoint_psk_keepalive_and_allowed_ips() -> None:
    change = PeerChange(
        PEER,
        preshared_key=PSK,
        endpoint=("192.0.2.7", 51820),
        persistent_keepalive=25,
        allowed_ips=[net("10.9.0.2/32"), net("10.20.0.0/16"), net("fd00:9::/64")],
    )
    (msg,) = build(SetRequest(peers=[change]))
    (peer,) = peers_in(msg)
    assert names(peer) == [
        "WGPEER_A_PUBLIC_KEY",
        "WGPEER_A_FLAGS",
        "WGPEER_A_PRESHARED_KEY",
        "WGPEER_A_ENDPOINT",
        "WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL",
        "WGPEER_A_ALLOWEDIPS",
    ]
    assert key_of(peer) == PEER
    assert peer.get_attr("WGPEER_A_FLAGS") == 0  # a plain add: create or update
    assert b64decode(peer.get_attr("WGPEER_A_PRESHARED_KEY")) == PSK.raw
    assert peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 25
    endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
    assert (endpoint["family"], endpoint["addr"], endpoint["port"]) == (
        socket.AF_INET,
        "192.0.2.7",
        51820,
    )
    # struct sockaddr_in, as the kernel reads it: family in host order, port big-endian.
    raw = payload(the_attr(peer, "WGPEER_A_ENDPOINT"))
    assert raw == struct.pack("=H", socket.AF_INET) + struct.pack(">H", 51820) + bytes(
        [192, 0, 2, 7]
    ) + bytes(8)
    assert ips_of(peer) == ["10.9.0.2/32", "10.20.0.0/16", "fd00:9::/64"]
    families = [e.get_attr("WGALLOWEDIP_A_FAMILY") for e in peer.get_attr("WGPEER_A_ALLOWEDIPS")]
    assert families == [socket.AF_INET, socket.AF_INET, socket.AF_INET6]
    masks = [e.get_attr("WGALLOWEDIP_A_CIDR_MASK") for e in peer.get_attr("WGPEER_A_ALLOWEDIPS")]
    assert masks == [32, 16, 64]


def test_add_peer_with_ipv6_endpoint() -> None:
    change = PeerChange(PEER, endpoint=("2001:DB8:0::5", 443), allowed_ips=[net("::/0")])
    (msg,) = build(SetRequest(peers=[change]))
    (peer,) = peers_in(msg)
    endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
    assert (endpoint["family"], endpoint["addr"], endpoint["port"]) == (
        socket.AF_INET6,
        "2001:db8::5",
        443,
    )
    # struct sockaddr_in6: family (host), port (BE), flowinfo (BE), address, scope (host).
    raw = payload(the_attr(peer, "WGPEER_A_ENDPOINT"))
    expected = struct.pack("=H", socket.AF_INET6) + struct.pack(">HI", 443, 0)
    expected += ipaddress.ip_address("2001:db8::5").packed + struct.pack("=I", 0)
    assert raw == expected
    assert ips_of(peer) == ["::/0"]


def test_a_scoped_ipv6_endpoint_carries_its_scope_id_in_host_order() -> None:
    index = socket.if_nametoindex("lo")
    for scope in ("lo", str(index)):
        change = PeerChange(PEER, endpoint=(f"fe80::1%{scope}", 51820))
        (msg,) = build(SetRequest(peers=[change]))
        raw = payload(the_attr(peers_in(msg)[0], "WGPEER_A_ENDPOINT"))
        assert len(raw) == 28
        assert raw[8:24] == ipaddress.ip_address("fe80::1").packed
        assert raw[24:] == struct.pack("=I", index)


def test_an_ipv4_mapped_endpoint_goes_as_ipv4() -> None:
    change = PeerChange(PEER, endpoint=("::ffff:192.0.2.9", 51820))
    (msg,) = build(SetRequest(peers=[change]))
    endpoint = peers_in(msg)[0].get_attr("WGPEER_A_ENDPOINT")
    assert (endpoint["family"], endpoint["addr"]) == (socket.AF_INET, "192.0.2.9")


def test_allowed_ips_given_as_text_are_normalized() -> None:
    change = PeerChange(PEER, allowed_ips=["10.9.0.7/24", "FD00::1/64"])  # type: ignore[list-item]
    (msg,) = build(SetRequest(peers=[change]))
    assert ips_of(peers_in(msg)[0]) == ["10.9.0.0/24", "fd00::/64"]


def test_remove_peer_sends_the_key_and_the_flag_only() -> None:
    change = PeerChange(PEER, remove=True, endpoint=("192.0.2.1", 1), allowed_ips=[net("::/0")])
    (msg,) = build(SetRequest(peers=[change]))
    (peer,) = peers_in(msg)
    assert names(peer) == ["WGPEER_A_PUBLIC_KEY", "WGPEER_A_FLAGS"]
    assert key_of(peer) == PEER
    assert peer.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REMOVE_ME


def test_update_only() -> None:
    change = PeerChange(PEER, update_only=True, endpoint=("192.0.2.1", 9))
    (msg,) = build(SetRequest(peers=[change]))
    (peer,) = peers_in(msg)
    assert peer.get_attr("WGPEER_A_FLAGS") == WGPEER_F_UPDATE_ONLY
    assert peer.get_attr("WGPEER_A_ALLOWEDIPS") is None


def test_replace_allowed_ips() -> None:
    change = PeerChange(PEER, replace_allowed_ips=True, allowed_ips=[net("10.9.0.3/32")])
    (msg,) = build(SetRequest(peers=[change]))
    (peer,) = peers_in(msg)
    assert peer.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REPLACE_ALLOWEDIPS
    assert ips_of(peer) == ["10.9.0.3/32"]
    # Replaced by nothing: the flag alone clears them.
    (msg,) = build(SetRequest(peers=[PeerChange(PEER, replace_allowed_ips=True)]))
    (peer,) = peers_in(msg)
    assert peer.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REPLACE_ALLOWEDIPS
    assert peer.get_attr("WGPEER_A_ALLOWEDIPS") is None


def test_update_only_and_replace_allowed_ips_combine() -> None:
    change = PeerChange(PEER, update_only=True, replace_allowed_ips=True)
    (msg,) = build(SetRequest(peers=[change]))
    flags = peers_in(msg)[0].get_attr("WGPEER_A_FLAGS")
    assert flags == WGPEER_F_UPDATE_ONLY | WGPEER_F_REPLACE_ALLOWEDIPS


def test_several_peers_in_order_in_one_message() -> None:
    changes = [PeerChange(KEYS[1], remove=True), PeerChange(KEYS[2]), PeerChange(KEYS[3])]
    (msg,) = build(SetRequest(peers=changes))
    assert [key_of(p) for p in peers_in(msg)] == KEYS[1:4]


def test_a_zero_psk_and_keepalive_are_sent_to_clear_them() -> None:
    change = PeerChange(PEER, preshared_key=PresharedKey.ZERO, persistent_keepalive=0)
    (msg,) = build(SetRequest(peers=[change]))
    (peer,) = peers_in(msg)
    assert b64decode(peer.get_attr("WGPEER_A_PRESHARED_KEY")) == bytes(32)
    assert peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 0


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (SetRequest(listen_port=65536), "listen_port must be within 0..65535, got 65536"),
        (SetRequest(listen_port=-1), "listen_port"),
        (SetRequest(fwmark=2**32), "fwmark"),
        (
            SetRequest(peers=[PeerChange(PEER, allowed_ips=["10.0.0.300/8"])]),  # type: ignore[list-item]
            "allowed IP '10.0.0.300/8' is not ADDRESS/CIDR",
        ),
        (
            SetRequest(peers=[PeerChange(PEER, persistent_keepalive=65536)]),
            "persistent keepalive",
        ),
        (SetRequest(peers=[PeerChange(PEER, endpoint=("192.0.2.1", 0))]), "endpoint port 0"),
        (SetRequest(peers=[PeerChange(PEER, endpoint=("example.net", 1))]), "is not (IP, port)"),
        (
            SetRequest(peers=[PeerChange(PEER, endpoint=("fe80::1%nosuchif0", 1))]),
            "scope 'nosuchif0' is not an interface",
        ),
        (SetRequest(peers=[PeerChange(OWN.public_key)]), "this interface's own public key"),
        (SetRequest(peers=[PeerChange(PublicKey(bytes(32)))]), "not a usable Curve25519 key"),
    ],
)
def test_bad_input_is_refused_naming_what_is_wrong(change: SetRequest, what: str) -> None:
    with pytest.raises(ConfigChangeError) as raised:
        set_messages(IFNAME, change, own_key=OWN)
    assert raised.value.code == errno.EINVAL
    assert what in str(raised.value)


def test_a_bad_peer_after_good_ones_refuses_the_whole_request() -> None:
    good = [PeerChange(k, allowed_ips=[net(f"10.9.0.{i}/32")]) for i, k in enumerate(KEYS[:5])]
    bad = PeerChange(KEYS[5], allowed_ips=["nonsense"])  # type: ignore[list-item]
    with pytest.raises(ConfigChangeError, match="'nonsense'"):
        set_messages(IFNAME, SetRequest(listen_port=1, peers=[*good, bad]))


def test_the_new_private_key_is_the_one_checked_against_peers() -> None:
    new = PrivateKey(bytes([42]) * 32)
    with pytest.raises(ConfigChangeError, match="own public key"):
        set_messages(IFNAME, SetRequest(private_key=new, peers=[PeerChange(new.public_key)]))
    # The old key's peer is fine once the key changes (and removing it always is).
    set_messages(
        IFNAME, SetRequest(private_key=new, peers=[PeerChange(OWN.public_key)]), own_key=OWN
    )
    set_messages(IFNAME, SetRequest(peers=[PeerChange(OWN.public_key, remove=True)]), own_key=OWN)


def test_a_message_limit_below_the_minimum_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="at least"):
        set_messages(IFNAME, SetRequest(), limit=100)


# -- splitting -------------------------------------------------------------------------------


def many_keys(n: int) -> list[PublicKey]:
    return [PrivateKey(n.to_bytes(2, "big") * 16).public_key for n in range(1000, 1000 + n)]


def test_many_peers_are_split_and_device_attributes_come_once() -> None:
    keys = many_keys(1500)
    changes = [
        PeerChange(
            k, endpoint=("192.0.2.1", 1000 + i), allowed_ips=[net(f"10.{i // 250}.{i % 250}.1/32")]
        )
        for i, k in enumerate(keys)
    ]
    req = SetRequest(private_key=OWN, fwmark=3, replace_peers=True, peers=changes)
    messages = set_messages(IFNAME, req)
    encoded = [encode(m) for m in messages]
    assert len(messages) > 1
    assert all(len(e) <= MESSAGE_LIMIT for e in encoded)
    assert all(len(e) > MESSAGE_LIMIT - 200 for e in encoded[:-1])  # full before the next
    decoded = [decode(e) for e in encoded]
    assert decoded[0].get_attr("WGDEVICE_A_FLAGS") == WGDEVICE_F_REPLACE_PEERS
    assert decoded[0].get_attr("WGDEVICE_A_PRIVATE_KEY") is not None
    for msg in decoded[1:]:  # REPLACE_PEERS again would drop the peers just added
        assert names(msg) == ["WGDEVICE_A_IFNAME", "WGDEVICE_A_PEERS"]
    sent = [p for m in decoded for p in peers_in(m)]
    assert [key_of(p) for p in sent] == keys
    assert [ips_of(p) for p in sent] == [[str(c.allowed_ips[0])] for c in changes]


def test_a_peer_with_many_allowed_ips_continues_in_the_next_message() -> None:
    ips = [net(f"10.{i // 256}.{i % 256}.0/24") for i in range(3000)]
    change = PeerChange(
        PEER,
        update_only=True,
        replace_allowed_ips=True,
        endpoint=("192.0.2.1", 7),
        allowed_ips=ips,
    )
    decoded = build(SetRequest(peers=[change]))
    assert len(decoded) > 1
    chunks = [peers_in(m) for m in decoded]
    assert all(len(c) == 1 and key_of(c[0]) == PEER for c in chunks)
    first, *rest = [c[0] for c in chunks]
    assert first.get_attr("WGPEER_A_FLAGS") == WGPEER_F_UPDATE_ONLY | WGPEER_F_REPLACE_ALLOWEDIPS
    assert first.get_attr("WGPEER_A_ENDPOINT") is not None
    for peer in rest:  # added to, never replaced again; never created if it did not exist
        assert names(peer) == ["WGPEER_A_PUBLIC_KEY", "WGPEER_A_FLAGS", "WGPEER_A_ALLOWEDIPS"]
        assert peer.get_attr("WGPEER_A_FLAGS") == WGPEER_F_UPDATE_ONLY
    assert [ip for c in chunks for ip in ips_of(c[0])] == [str(n) for n in ips]


def test_no_nest_reaches_the_16_bit_attribute_length() -> None:
    ips = [net(f"fd00::{i:x}/128") for i in range(4000)]  # 160 KB of allowed IPs
    for msg in build(SetRequest(peers=[PeerChange(PEER, allowed_ips=ips)])):
        assert msg["header"]["length"] <= MESSAGE_LIMIT < 65535


def simulate(state: dict[bytes, list[str]], messages: list[wgmsg]) -> dict[bytes, list[str]]:
    """The kernel's reading of WG_CMD_SET_DEVICE messages, peers and allowed IPs only."""
    state = {k: list(v) for k, v in state.items()}
    for msg in messages:
        if (msg.get_attr("WGDEVICE_A_FLAGS") or 0) & WGDEVICE_F_REPLACE_PEERS:
            state.clear()
        for peer in peers_in(msg):
            key, flags = key_of(peer).raw, peer.get_attr("WGPEER_A_FLAGS") or 0
            if flags & WGPEER_F_REMOVE_ME:
                state.pop(key, None)
                continue
            if key not in state:
                if flags & WGPEER_F_UPDATE_ONLY:
                    continue
                state[key] = []
            if flags & WGPEER_F_REPLACE_ALLOWEDIPS:
                state[key] = []
            state[key] += ips_of(peer)
    return state


def expected(state: dict[bytes, list[str]], req: SetRequest) -> dict[bytes, list[str]]:
    """The same request applied directly, as its fields say."""
    state = {} if req.replace_peers else {k: list(v) for k, v in state.items()}
    for change in req.peers:
        key = change.public_key.raw
        if change.remove:
            state.pop(key, None)
            continue
        if key not in state:
            if change.update_only:
                continue
            state[key] = []
        if change.replace_allowed_ips:
            state[key] = []
        state[key] += [str(n) for n in change.allowed_ips]
    return state


changes = st.builds(
    PeerChange,
    public_key=st.sampled_from(KEYS[:4]),
    remove=st.booleans(),
    update_only=st.booleans(),
    replace_allowed_ips=st.booleans(),
    persistent_keepalive=st.none() | st.integers(0, 65535),
    endpoint=st.none() | st.sampled_from([("192.0.2.1", 1), ("2001:db8::1", 65535)]),
    allowed_ips=st.lists(
        st.builds(
            lambda i, p: ipaddress.ip_network((f"10.{i}.{i}.{i}", p), strict=False),
            st.integers(0, 255),
            st.integers(8, 32),
        ),
        max_size=40,
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    initial=st.dictionaries(
        st.sampled_from([k.raw for k in KEYS[:4]]), st.lists(st.just("10.255.0.1/32"), max_size=2)
    ),
    req=st.builds(
        SetRequest,
        private_key=st.none() | st.just(OWN),
        replace_peers=st.booleans(),
        peers=st.lists(changes, max_size=12),
    ),
    limit=st.integers(512, 2048),
)
def test_split_messages_mean_the_same_as_the_request(
    initial: dict[bytes, list[str]], req: SetRequest, limit: int
) -> None:
    messages = set_messages(IFNAME, req, limit=limit)
    encoded = [encode(m) for m in messages]
    assert all(len(e) <= limit for e in encoded)
    assert simulate(initial, [decode(e) for e in encoded]) == expected(initial, req)


# -- dump replies ----------------------------------------------------------------------------


def reply(*peers: dict[str, Any], port: int | None = 51820, flags: int = NLM_F_MULTI) -> wgmsg:
    """A WG_CMD_GET_DEVICE reply as the kernel would send it, through pyroute2's encoder."""
    msg = wgmsg()
    msg["cmd"] = WG_CMD_GET_DEVICE
    msg["version"] = 1
    msg["header"]["type"] = 0x1A
    msg["header"]["flags"] = flags
    attrs: list[list[Any]] = []
    if port is not None:
        attrs += [
            ["WGDEVICE_A_LISTEN_PORT", port],
            ["WGDEVICE_A_FWMARK", 0],
            ["WGDEVICE_A_IFINDEX", 7],
            ["WGDEVICE_A_IFNAME", IFNAME],
            ["WGDEVICE_A_PRIVATE_KEY", OWN.to_base64()],
            ["WGDEVICE_A_PUBLIC_KEY", OWN.public_key.to_base64()],
        ]
    if peers:
        attrs.append(["WGDEVICE_A_PEERS", [{"attrs": wire_peer(**p)} for p in peers]])
    msg["attrs"] = attrs
    msg.encode()
    return decode(bytes(msg.data))


def wire_peer(
    key: PublicKey,
    ips: tuple[str, ...] = (),
    endpoint: dict[str, Any] | None = None,
    handshake: tuple[int, int] | None = None,
    rx: int = 0,
    tx: int = 0,
    keepalive: int = 0,
) -> list[list[Any]]:
    attrs: list[list[Any]] = [["WGPEER_A_PUBLIC_KEY", key.to_base64()]]
    if handshake is not None:
        attrs += [
            ["WGPEER_A_PRESHARED_KEY", b64encode(bytes(32)).decode()],
            ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": handshake[0], "tv_nsec": handshake[1]}],
            ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", keepalive],
            ["WGPEER_A_TX_BYTES", tx],
            ["WGPEER_A_RX_BYTES", rx],
            ["WGPEER_A_PROTOCOL_VERSION", 1],
        ]
    if endpoint is not None:
        attrs.append(["WGPEER_A_ENDPOINT", endpoint])
    entries = []
    for text in ips:
        n = net(text)
        family = socket.AF_INET if n.version == 4 else socket.AF_INET6
        entries.append(
            {
                "attrs": [
                    ["WGALLOWEDIP_A_FAMILY", family],
                    ["WGALLOWEDIP_A_IPADDR", n.network_address.packed],
                    ["WGALLOWEDIP_A_CIDR_MASK", n.prefixlen],
                ]
            }
        )
    if entries:
        attrs.append(["WGPEER_A_ALLOWEDIPS", entries])
    return attrs


def scope_for_pyroute2(index: int) -> int:
    """What pyroute2 must be given to put ``index`` on the wire in host order."""
    return int.from_bytes(struct.pack("=I", index), "big")


def test_peers_are_parsed_from_a_dump() -> None:
    lo = socket.if_nametoindex("lo")
    replies = [
        reply(
            {
                "key": KEYS[0],
                "ips": ("10.9.0.2/32", "fd00:9::2/128"),
                "endpoint": {"addr": "192.0.2.7", "port": 51820},
                "handshake": (1_700_000_000, 250_000_000),
                "rx": 2**40,
                "tx": 12345,
                "keepalive": 25,
            },
            {
                "key": KEYS[1],
                "endpoint": {
                    "addr": "fe80::9",
                    "port": 443,
                    "flowinfo": 0,
                    "scope_id": scope_for_pyroute2(lo),
                },
                "handshake": (0, 0),
                "ips": ("10.9.0.3/32",),
            },
        ),
        # The kernel ran out of room: KEYS[1] continues, then KEYS[2] (never configured
        # beyond its key: no endpoint, no handshake, no counters).
        reply({"key": KEYS[1], "ips": ("10.9.3.0/24",)}, {"key": KEYS[2]}, port=None),
    ]
    first, second, third = parse_peers(replies)
    assert first.public_key == KEYS[0]
    assert first.endpoint == ("192.0.2.7", 51820)
    assert first.allowed_ips == ("10.9.0.2/32", "fd00:9::2/128")
    assert first.last_handshake == 1_700_000_000.25
    assert (first.rx_bytes, first.tx_bytes, first.persistent_keepalive) == (2**40, 12345, 25)
    assert second.public_key == KEYS[1]
    assert second.endpoint == ("fe80::9%lo", 443)
    assert second.allowed_ips == ("10.9.0.3/32", "10.9.3.0/24")
    assert second.last_handshake is None  # 0: never
    assert third.public_key == KEYS[2]
    assert (third.endpoint, third.allowed_ips, third.last_handshake) == (None, (), None)
    assert (third.rx_bytes, third.tx_bytes, third.persistent_keepalive) == (0, 0, 0)
    assert parse_listen_port(replies) == 51820


def test_a_device_without_peers_parses_to_none() -> None:
    assert parse_peers([reply()]) == []
    assert parse_listen_port([reply(port=0)]) == 0
    assert parse_listen_port([reply(port=None)]) is None


def test_an_interrupted_dump_is_an_error() -> None:
    with pytest.raises(DumpInterrupted):
        parse_peers([reply({"key": PEER}, flags=NLM_F_MULTI | NLM_F_DUMP_INTR)])


def test_what_is_set_reads_back_the_same() -> None:
    """A SetRequest's peer, re-encoded as a reply from its own attributes, parses to it."""
    change = PeerChange(
        PEER,
        endpoint=("2001:db8::7", 9),
        persistent_keepalive=15,
        allowed_ips=[net("10.9.0.9/32"), net("fd00::/8")],
    )
    (msg,) = build(SetRequest(peers=[change]))
    (peer,) = peers_in(msg)
    endpoint = dict(peer.get_attr("WGPEER_A_ENDPOINT"))
    (status,) = parse_peers(
        [
            reply(
                {
                    "key": key_of(peer),
                    "ips": tuple(ips_of(peer)),
                    "endpoint": {k: endpoint[k] for k in ("addr", "port", "flowinfo", "scope_id")},
                    "handshake": (0, 0),
                    "keepalive": peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL"),
                }
            )
        ]
    )
    assert status.endpoint == change.endpoint
    assert status.allowed_ips == tuple(str(n) for n in change.allowed_ips)
    assert status.persistent_keepalive == 15


# -- NetlinkPeers ----------------------------------------------------------------------------


class Dumps:
    def __init__(self, *replies: wgmsg) -> None:
        self.replies: list[wgmsg] | OSError = list(replies)
        self.reads = 0

    def __call__(self) -> list[wgmsg]:
        self.reads += 1
        if isinstance(self.replies, OSError):
            raise self.replies
        return self.replies


def test_netlink_peers_name_the_peer_by_longest_prefix() -> None:
    dumps = Dumps(
        reply(
            {"key": KEYS[0], "ips": ("10.9.0.0/24", "fd00::/64")},
            {"key": KEYS[1], "ips": ("10.9.0.7/32",)},
        )
    )
    peers = NetlinkPeers(IFNAME, read=dumps)
    assert peers.peer_of("10.9.0.1") == KEYS[0]
    assert peers.peer_of("10.9.0.7") == KEYS[1]
    assert peers.peer_of("fd00::5") == KEYS[0]
    assert peers.peer_of("fe80::1%wg0") is None
    assert peers.peer_of("garbage") is None


def test_netlink_peers_cache_and_reread_misses_at_a_bounded_rate() -> None:
    import time

    dumps = Dumps(reply({"key": KEYS[0], "ips": ("10.9.0.1/32",)}))
    peers = NetlinkPeers(IFNAME, ttl=60.0, read=dumps)
    for _ in range(50):
        assert peers.peer_of("10.9.0.1") == KEYS[0]
    assert dumps.reads == 1
    for _ in range(50):
        assert peers.peer_of("10.9.0.99") is None
    assert dumps.reads == 1
    dumps.replies = [
        reply({"key": KEYS[0], "ips": ("10.9.0.1/32",)}, {"key": KEYS[1], "ips": ("10.9.0.2/32",)})
    ]
    time.sleep(MISS_INTERVAL + 0.02)
    assert peers.peer_of("10.9.0.2") == KEYS[1]
    assert dumps.reads == 2


def test_netlink_peers_fail_closed() -> None:
    dumps = Dumps()
    dumps.replies = OSError(errno.ENODEV, f"no WireGuard interface named {IFNAME!r}")
    peers = NetlinkPeers(IFNAME, read=dumps)
    with pytest.raises(OSError, match=f"cannot read the peers of {IFNAME}: no WireGuard"):
        peers.peer_of("10.9.0.1")


@pytest.mark.skipif(kernel_available(), reason="the kernel WireGuard module is loaded here")
def test_netlink_peers_without_the_module_fail_closed_naming_it() -> None:
    peers = NetlinkPeers(IFNAME)
    try:
        with pytest.raises(OSError, match="kernel WireGuard module not loaded"):
            peers.peer_of("10.9.0.1")
    finally:
        peers.close()


# -- the backend over fake netlink ---------------------------------------------------------


class FakeNetlink:
    """Records what would be sent (encoded with pyroute2 and decoded back); answers dumps."""

    def __init__(self, port: int = 51820) -> None:
        self.sent: list[list[wgmsg]] = []
        self.port = port
        self.peers: list[dict[str, Any]] = []
        self.refuse: tuple[int, int] | None = None  # (message index, errno)

    def set(self, messages: Sequence[Message]) -> None:
        batch = []
        for index, message in enumerate(messages):
            if self.refuse is not None and self.refuse[0] == index:
                code = self.refuse[1]
                self.sent.append(batch)
                raise NetlinkSetError(
                    code,
                    f"{IFNAME}: message {index + 1} of {len(messages)} refused: "
                    f"{errno.errorcode[code]}",
                    index,
                    len(messages),
                )
            batch.append(decode(encode(message)))
        self.sent.append(batch)

    def dump(self) -> list[wgmsg]:
        return [reply(*self.peers, port=self.port)]


class FakeLinks:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, BaseException] = {}

    def _call(self, what: str, name: str) -> None:
        self.calls.append((what, name))
        if what in self.fail:
            raise self.fail[what]

    def create(self, name: str) -> None:
        self._call("create", name)

    def configure(self, name: str, spec: BackendSpec) -> None:
        self._call("configure", name)

    def delete(self, name: str) -> None:
        self._call("delete", name)


def spec(port: int = 51820, name: str = IFNAME) -> BackendSpec:
    return BackendSpec(
        OWN,
        (ipaddress.ip_interface("10.9.0.1/16"), ipaddress.ip_interface("fd00:9::1/64")),
        port,
        1420,
        name,
        routes=("10.99.0.0/16",),
    )


async def started(
    netlink: FakeNetlink | None = None, links: FakeLinks | None = None, port: int = 51820
) -> tuple[KernelBackend, FakeNetlink, FakeLinks]:
    netlink = netlink or FakeNetlink()
    links = links or FakeLinks()
    backend = await KernelBackend.start(spec(port), netlink=netlink, links=links)
    return backend, netlink, links


def test_start_creates_configures_and_learns_the_port() -> None:
    async def main() -> None:
        backend, netlink, links = await started(FakeNetlink(port=43210), port=0)
        assert links.calls == [("create", IFNAME), ("configure", IFNAME)]
        ((port_msg, key_msg),) = netlink.sent
        assert port_msg.get_attr("WGDEVICE_A_LISTEN_PORT") == 0
        assert b64decode(key_msg.get_attr("WGDEVICE_A_PRIVATE_KEY")) == OWN.raw
        assert backend.listen_port == 43210  # the kernel's pick, read back
        assert backend.name == "kernel"
        assert [str(a) for a in backend.network.addresses] == ["10.9.0.1", "fd00:9::1"]
        assert backend.network.interface == IFNAME
        await backend.close()
        await backend.close()
        assert links.calls[-1] == ("delete", IFNAME) and links.calls.count(("delete", IFNAME)) == 1

    asyncio.run(main())


def test_a_failed_start_deletes_the_interface_again() -> None:
    links = FakeLinks()
    links.fail["configure"] = NetlinkError(errno.EINVAL, "Invalid argument")

    async def main() -> None:
        with pytest.raises(BackendError, match="setting the MTU, addresses and routes") as raised:
            await started(links=links)
        assert raised.value.__cause__ is None and raised.value.__suppress_context__

    asyncio.run(main())
    assert links.calls == [("create", IFNAME), ("configure", IFNAME), ("delete", IFNAME)]


def test_start_reports_an_existing_interface() -> None:
    links = FakeLinks()
    links.fail["create"] = NetlinkError(errno.EEXIST, "File exists")
    with pytest.raises(BackendError, match=f"interface {IFNAME} already exists"):
        asyncio.run(started(links=links))
    assert links.calls == [("create", IFNAME)]  # not ours: left alone


def test_start_refuses_a_bad_spec_before_any_netlink() -> None:
    links = FakeLinks()
    for bad, what in [
        (spec(name="a-name-far-too-long"), "1-15 bytes"),
        (spec(name="wg/0"), "forbidden character"),
        (BackendSpec(OWN, (), 1, 1420, IFNAME), "at least one address"),
        (BackendSpec(OWN, spec().addresses, 1, 1420, IFNAME, routes=("nope",)), "route 'nope'"),
    ]:
        with pytest.raises(BackendError, match=what):
            asyncio.run(KernelBackend.start(bad, netlink=FakeNetlink(), links=links))
    assert links.calls == []


def test_apply_sends_the_messages() -> None:
    async def main() -> None:
        backend, netlink, _ = await started()
        change = PeerChange(PEER, endpoint=("192.0.2.1", 51820), allowed_ips=[net("10.9.0.2/32")])
        await backend.apply(SetRequest(peers=[change]))
        (msg,) = netlink.sent[-1]
        (peer,) = peers_in(msg)
        assert key_of(peer) == PEER and ips_of(peer) == ["10.9.0.2/32"]
        await backend.apply(SetRequest())  # nothing to say: nothing sent
        assert len(netlink.sent) == 2

    asyncio.run(main())


def test_bad_input_to_apply_sends_nothing() -> None:
    async def main() -> None:
        backend, netlink, _ = await started()
        before = len(netlink.sent)
        for bad in [
            SetRequest(listen_port=70000),
            SetRequest(peers=[PeerChange(PEER, allowed_ips=["10.9.0.300/32"])]),  # type: ignore[list-item]
            SetRequest(peers=[PeerChange(OWN.public_key)]),  # the interface's own key
        ]:
            with pytest.raises(ConfigChangeError):
                await backend.apply(bad)
        assert len(netlink.sent) == before

    asyncio.run(main())


def test_apply_tracks_the_private_key_and_listen_port() -> None:
    async def main() -> None:
        backend, netlink, _ = await started()
        new = PrivateKey(bytes([77]) * 32)
        await backend.apply(SetRequest(private_key=new, listen_port=40000))
        assert backend.listen_port == 40000
        with pytest.raises(ConfigChangeError, match="own public key"):
            await backend.apply(SetRequest(peers=[PeerChange(new.public_key)]))
        await backend.apply(SetRequest(peers=[PeerChange(OWN.public_key)]))  # the old key: fine
        netlink.port = 45678
        await backend.apply(SetRequest(listen_port=0))
        assert backend.listen_port == 45678

    asyncio.run(main())


def test_a_refused_listen_port_is_a_config_change_error_and_nothing_changed() -> None:
    async def main() -> None:
        backend, netlink, _ = await started()
        netlink.refuse = (0, errno.EADDRINUSE)
        with pytest.raises(ConfigChangeError, match="listen_port 40000") as raised:
            await backend.apply(SetRequest(listen_port=40000, peers=[PeerChange(PEER)]))
        assert raised.value.code == errno.EADDRINUSE
        assert backend.listen_port == 51820

    asyncio.run(main())


def test_a_refusal_after_the_first_message_says_how_far_it_got() -> None:
    async def main() -> None:
        backend, netlink, _ = await started()
        netlink.refuse = (1, errno.ENOMEM)
        with pytest.raises(BackendError, match="1 of 2 messages applied"):
            await backend.apply(SetRequest(listen_port=40000, peers=[PeerChange(PEER)]))
        netlink.refuse = (0, errno.ENOMEM)
        with pytest.raises(BackendError, match="none applied"):
            await backend.apply(SetRequest(peers=[PeerChange(PEER)]))

    asyncio.run(main())


def test_backend_peers_and_network_read_the_dump() -> None:
    async def main() -> None:
        netlink = FakeNetlink()
        netlink.peers = [
            {"key": PEER, "ips": ("10.9.0.2/32",), "handshake": (1_700_000_000, 0), "rx": 5}
        ]
        links = FakeLinks()
        backend = KernelBackend(
            spec(),
            51820,
            netlink=netlink,
            links=links,
            peers=NetlinkPeers(IFNAME, read=netlink.dump),
        )
        (status,) = await backend.peers()
        assert (status.public_key, status.allowed_ips, status.rx_bytes) == (
            PEER,
            ("10.9.0.2/32",),
            5,
        )
        assert status.last_handshake == 1_700_000_000
        assert backend.network.peer_of("10.9.0.2") == PEER
        assert backend.network.peer_of("10.9.0.3") is None
        sent_before = len(netlink.sent)
        await backend.rekey(PEER)  # remove and re-add: the kernel's only "handshake now"
        messages = netlink.sent[sent_before:]
        assert messages, "rekey sent nothing"
        await backend.close()

    asyncio.run(main())


def test_close_tolerates_an_interface_already_gone() -> None:
    async def main() -> None:
        backend, _, links = await started()
        links.fail["delete"] = NetlinkError(errno.ENODEV, "No such device")
        await backend.close()

    asyncio.run(main())


# -- without the module --------------------------------------------------------------------


def test_start_errors_say_what_to_do() -> None:
    step = "creating the WireGuard interface wg0"
    e = start_error(
        "wg0", step, NetlinkError(errno.EOPNOTSUPP, "Operation not supported"), creating=True
    )
    assert str(e).startswith("kernel WireGuard module not loaded (")
    assert "modprobe wireguard" in str(e) and '"userspace" or "embedded"' in str(e)


def test_unprivileged_without_the_module_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    denied = NetlinkError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(backend_kernel, "kernel_available", lambda: False)
    e = start_error("wg0", "creating", denied, creating=True)
    assert str(e).startswith("kernel WireGuard module not loaded")
    assert "CAP_NET_ADMIN" in str(e)
    monkeypatch.setattr(backend_kernel, "kernel_available", lambda: True)
    e = start_error("wg0", "creating", denied, creating=True)
    assert str(e) == "kernel backend: creating needs CAP_NET_ADMIN (Operation not permitted)"


def test_a_missing_generic_netlink_family_reads_as_a_missing_module() -> None:
    links = FakeLinks()  # the link "exists"; the wireguard family does not

    class NoFamily(FakeNetlink):
        def set(self, messages: Sequence[Message]) -> None:
            raise ModuleMissingError(
                errno.ENOENT, "kernel WireGuard module not loaded (no generic netlink family)"
            )

    with pytest.raises(BackendError, match=r"^kernel WireGuard module not loaded \(no generic"):
        asyncio.run(started(NoFamily(), links))
    assert links.calls[-1] == ("delete", IFNAME)


@pytest.mark.skipif(kernel_available(), reason="the kernel WireGuard module is loaded here")
def test_wireguard_netlink_without_the_module() -> None:
    with pytest.raises(ModuleMissingError, match="kernel WireGuard module not loaded"):
        WireGuardNetlink(IFNAME).dump()


@pytest.mark.skipif(kernel_available(), reason="the kernel WireGuard module is loaded here")
def test_start_without_the_module_is_a_clear_backend_error() -> None:
    """For real: IPRoute asked for a "wireguard" link on a kernel without the module."""

    async def main() -> None:
        try:
            backend = await start_backend("kernel", spec(port=0, name="pyrlgtest0"))
        except BackendError as e:
            assert str(e).startswith("kernel WireGuard module not loaded"), str(e)
            assert e.__cause__ is None and e.__suppress_context__  # no netlink traceback
            return
        await backend.close()  # the kernel loaded the module on demand
        pytest.skip("the kernel loaded the WireGuard module on demand")

    asyncio.run(main())
