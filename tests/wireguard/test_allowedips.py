"""Tests for the cryptokey routing table (pyralog.wireguard.allowedips)."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyralog.wireguard.allowedips import AllowedIPs, _Node


class Peer:
    """A stand-in peer; distinct instances compare by identity, like real peers."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Peer({self.name})"


def network(version: int, address: int, plen: int) -> IPv4Network | IPv6Network:
    # Explicit class: ip_network() would read a small IPv6 int as an IPv4 address.
    cls = IPv4Network if version == 4 else IPv6Network
    return cls((address, plen), strict=False)


def v4(address: str) -> bytes:
    return IPv4Address(address).packed


def v6(address: str) -> bytes:
    return IPv6Address(address).packed


class Model:
    """Naive reference: a dict of prefixes, lookup by scanning every entry."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, int, int], object] = {}

    @staticmethod
    def _width(version: int) -> int:
        return 32 if version == 4 else 128

    def _key(self, version: int, address: int, plen: int) -> tuple[int, int, int]:
        shift = self._width(version) - plen
        return version, address >> shift << shift, plen

    def insert(self, version: int, address: int, plen: int, value: object) -> None:
        self.entries[self._key(version, address, plen)] = value

    def remove(self, version: int, address: int, plen: int) -> bool:
        return self.entries.pop(self._key(version, address, plen), None) is not None

    def remove_value(self, value: object) -> int:
        doomed = [k for k, v in self.entries.items() if v is value]
        for k in doomed:
            del self.entries[k]
        return len(doomed)

    def lookup(self, version: int, address: int) -> object | None:
        best, best_len = None, -1
        for (ver, net, plen), value in self.entries.items():
            shift = self._width(ver) - plen
            if ver == version and address >> shift << shift == net and plen > best_len:
                best, best_len = value, plen
        return best

    def items(self) -> list[tuple[IPv4Network | IPv6Network, object]]:
        cls = {4: IPv4Network, 6: IPv6Network}
        return [
            (cls[ver]((net, plen)), self.entries[ver, net, plen])
            for ver, net, plen in sorted(self.entries)
        ]


def check_structure(table: AllowedIPs[object]) -> None:
    """Every trie invariant the module docstring promises."""
    nodes = 0
    for trie in (table._v4, table._v6):
        stack: list[tuple[_Node[object] | None, _Node[object] | None]] = [(trie.root, None)]
        while stack:
            node, parent = stack.pop()
            if node is None:
                continue
            nodes += 1
            assert node.shift == trie.width - node.cidr
            assert node.key >> node.shift << node.shift == node.key, "host bits set"
            if node.value is None:
                assert None not in node.child, "branch point without two children"
            if node.shift == 0:
                assert node.child == [None, None]
            if parent is not None:
                assert node.cidr > parent.cidr
                assert (node.key ^ parent.key) >> parent.shift == 0, "child outside parent"
            stack.extend((child, node) for child in node.child)
    assert nodes == table._node_count()
    assert nodes <= max(0, 2 * len(table) - 1)


# -- examples ----------------------------------------------------------------------------


def test_longest_prefix_wins_ipv4() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b, c, d = Peer("a"), Peer("b"), Peer("c"), Peer("d")
    table.insert("0.0.0.0/0", a)
    table.insert("10.0.0.0/8", b)
    table.insert("10.1.0.0/16", c)
    table.insert("10.1.2.3/32", d)
    assert table.lookup(v4("192.168.1.1")) is a
    assert table.lookup(v4("10.200.0.1")) is b
    assert table.lookup(v4("10.1.99.1")) is c
    assert table.lookup(v4("10.1.2.3")) is d
    assert table.lookup(v4("10.1.2.4")) is c
    assert len(table) == 4
    check_structure(table)


def test_longest_prefix_wins_ipv6() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b, c, d = Peer("a"), Peer("b"), Peer("c"), Peer("d")
    table.insert("::/0", a)
    table.insert("fd00::/8", b)
    table.insert("fd00:1::/32", c)
    table.insert("fd00:1::5/128", d)
    assert table.lookup(v6("2001:db8::1")) is a
    assert table.lookup(v6("fd99::1")) is b
    assert table.lookup(v6("fd00:1:2::1")) is c
    assert table.lookup(v6("fd00:1::5")) is d
    assert table.lookup(v6("fd00:1::6")) is c
    check_structure(table)


def test_families_are_separate() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b = Peer("a"), Peer("b")
    table.insert("::/0", a)
    assert table.lookup(v4("10.0.0.1")) is None
    assert table.lookup(bytes(4)) is None
    table.insert("0.0.0.0/0", b)
    assert table.lookup(v4("10.0.0.1")) is b
    assert table.lookup(bytes(16)) is a
    assert table.lookup(v6("::ffff:10.0.0.1")) is a  # mapped addresses stay IPv6


def test_host_bits_are_masked() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b = Peer("a"), Peer("b")
    table.insert("10.0.0.1/24", a)
    table.insert("fd00::1234/64", b)
    assert table.entries(a) == [ip_network("10.0.0.0/24")]
    assert table.entries(b) == [ip_network("fd00::/64")]
    assert table.lookup(v4("10.0.0.200")) is a
    assert table.remove("10.0.0.77/24")  # any host bits name the same prefix
    assert table.lookup(v4("10.0.0.200")) is None


def test_host_route_string_and_convenience_addresses() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a = Peer("a")
    table.insert("10.0.0.1", a)
    table.insert(IPv6Network("fd00::/64"), a)
    assert table.entries(a) == [ip_network("10.0.0.1/32"), ip_network("fd00::/64")]
    assert table.lookup("10.0.0.1") is a
    assert table.lookup(IPv4Address("10.0.0.1")) is a
    assert table.lookup(IPv6Address("fd00::9")) is a
    assert table.lookup(bytearray(v4("10.0.0.1"))) is a
    assert table.lookup(memoryview(b"\x45" + v4("10.0.0.1"))[1:]) is a  # header slice
    assert table.lookup("10.0.0.2") is None


def test_reassign_moves_prefix() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b = Peer("a"), Peer("b")
    table.insert("10.0.0.0/24", a)
    table.insert("10.0.0.0/24", b)
    assert len(table) == 1
    assert table.lookup(v4("10.0.0.9")) is b
    assert table.entries(a) == []
    assert table.entries(b) == [ip_network("10.0.0.0/24")]


def test_remove_exact_prefix_only() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b = Peer("a"), Peer("b")
    table.insert("10.0.0.0/8", a)
    table.insert("10.1.0.0/16", b)
    assert not table.remove("10.0.0.0/16")  # not present: nothing happens
    assert not table.remove("10.1.0.0/24")
    assert not table.remove("10.0.0.0/7")
    assert not table.remove("fd00::/8")
    assert len(table) == 2
    assert table.remove("10.0.0.0/8")
    assert not table.remove("10.0.0.0/8")
    assert table.lookup(v4("10.2.0.1")) is None
    assert table.lookup(v4("10.1.0.1")) is b
    check_structure(table)


def test_remove_branch_point_is_not_an_entry() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a = Peer("a")
    table.insert("10.0.0.0/24", a)
    table.insert("10.0.1.0/24", a)  # creates a valueless branch at 10.0.0.0/23
    assert not table.remove("10.0.0.0/23")
    assert table._node_count() == 3
    assert len(table) == 2


def test_remove_value_removes_all_and_leaves_others() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b = Peer("a"), Peer("b")
    for net in ("10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/24", "fd00::/8", "fd00:1::/32"):
        table.insert(net, a)
    table.insert("10.1.1.0/24", b)
    table.insert("fd00:1:1::/48", b)
    assert table.remove_value(a) == 5
    assert table.remove_value(a) == 0
    assert table.remove_value(Peer("a")) == 0  # identity, not equality
    assert len(table) == 2
    assert table.lookup(v4("10.1.1.1")) is b
    assert table.lookup(v4("10.1.2.1")) is None
    assert table.lookup(v6("fd00:1:1::1")) is b
    assert [net for net, _ in table.items()] == [
        ip_network("10.1.1.0/24"),
        ip_network("fd00:1:1::/48"),
    ]
    check_structure(table)


def test_entries_order() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    a, b = Peer("a"), Peer("b")
    nets = ["fd00::/64", "10.0.0.0/8", "::/0", "10.0.0.0/16", "9.0.0.0/8", "0.0.0.0/0"]
    nets += ["10.0.0.0/24", "fc00::/7", "10.128.0.0/9", "fd00::/8"]
    for net in nets:
        table.insert(net, a)
    table.insert("10.0.0.0/12", b)
    expected = sorted(
        (ip_network(n) for n in nets),
        key=lambda n: (n.version, int(n.network_address), n.prefixlen),
    )
    assert table.entries(a) == expected
    assert table.entries(b) == [ip_network("10.0.0.0/12")]
    assert [v for _, v in table.items()].count(b) == 1


def test_lookup_bad_lengths() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("0.0.0.0/0", Peer("a"))
    table.insert("::/0", Peer("b"))
    for size in (0, 1, 3, 5, 8, 15, 17, 32):
        assert table.lookup(bytes(size)) is None


def test_bad_arguments() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    with pytest.raises(TypeError):
        table.insert("10.0.0.0/8", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        table.insert(b"\n\0\0\0", Peer("a"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        table.insert("10.0.0.0/33", Peer("a"))
    with pytest.raises(ValueError):
        table.lookup("not an address")
    with pytest.raises(TypeError):
        table.lookup(167772161)  # type: ignore[arg-type]


def test_nodes_are_pruned() -> None:
    rng = random.Random(1)
    table: AllowedIPs[Peer] = AllowedIPs()
    peers = [Peer(str(i)) for i in range(8)]
    for _ in range(3):  # churn: memory must not grow across rounds
        nets = {network(4, rng.getrandbits(32), rng.randint(0, 32)) for _ in range(500)}
        nets |= {network(6, rng.getrandbits(128), rng.randint(0, 128)) for _ in range(500)}
        for net in nets:
            table.insert(net, rng.choice(peers))
        assert len(table) == len(nets)
        check_structure(table)
        doomed = list(nets)
        rng.shuffle(doomed)
        for net in doomed[: len(doomed) // 2]:
            assert table.remove(net)
        check_structure(table)
        for peer in peers:
            table.remove_value(peer)
        assert len(table) == 0
        assert table._node_count() == 0
        assert table._v4.root is None and table._v6.root is None


def test_clear() -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    table.insert("10.0.0.0/8", Peer("a"))
    table.insert("fd00::/8", Peer("a"))
    table.clear()
    assert len(table) == 0
    assert list(table.items()) == []
    assert table.lookup(v4("10.0.0.1")) is None
    assert table._node_count() == 0


# -- against the reference model ---------------------------------------------------------

VALUES = [Peer(str(i)) for i in range(4)]

# Addresses near a few bases, varied at a few bit depths, so prefixes nest and collide.
FAMILIES = {
    4: (32, [0, 0x0A000000, 0x0A010000, 0xC0A80100, 0xFFFFFFFF], [0, 4, 8, 16, 24, 28]),
    6: (
        128,
        [0, 0xFD00 << 112, (0xFD00 << 112) | (1 << 64), 0x20010DB8 << 96, (1 << 128) - 1],
        [0, 4, 8, 60, 64, 100, 124],
    ),
}


def addresses(version: int) -> st.SearchStrategy[int]:
    width, bases, shifts = FAMILIES[version]
    mask = (1 << width) - 1
    return st.builds(
        lambda base, noise, shift: (base ^ (noise << shift)) & mask,
        st.sampled_from(bases),
        st.integers(0, 15),
        st.sampled_from(shifts),
    )


def operations(version: int) -> st.SearchStrategy[tuple[object, ...]]:
    width = FAMILIES[version][0]
    plens = st.one_of(st.integers(0, width), st.sampled_from([0, 8, width // 2, width]))
    address = addresses(version)
    value = st.integers(0, len(VALUES) - 1)
    return st.one_of(
        st.tuples(st.just("insert"), address, plens, value, st.booleans()),
        st.tuples(st.just("remove"), address, plens),
        st.tuples(st.just("remove_value"), value),
        st.tuples(st.just("lookup"), address),
    )


def run_against_model(version: int, ops: list[tuple[object, ...]]) -> None:
    width = FAMILIES[version][0]
    addr_cls = IPv4Address if version == 4 else IPv6Address
    table: AllowedIPs[Peer] = AllowedIPs()
    model = Model()
    for op in ops:
        match op:
            case ("insert", int(address), int(plen), int(vi), bool(as_string)):
                # Host bits are left in on purpose; both spellings must mask them.
                net = (
                    f"{addr_cls(address)}/{plen}" if as_string else network(version, address, plen)
                )
                table.insert(net, VALUES[vi])
                model.insert(version, address, plen, VALUES[vi])
            case ("remove", int(address), int(plen)):
                net = network(version, address, plen)
                assert table.remove(net) == model.remove(version, address, plen)
            case ("remove_value", int(vi)):
                assert table.remove_value(VALUES[vi]) == model.remove_value(VALUES[vi])
            case ("lookup", int(address)):
                got = table.lookup(address.to_bytes(width // 8, "big"))
                assert got is model.lookup(version, address)
        assert len(table) == len(model.entries)
    check_structure(table)
    assert list(table.items()) == model.items()
    for value in VALUES:
        assert table.entries(value) == [n for n, v in model.items() if v is value]
    for value in VALUES:
        table.remove_value(value)
    assert table._node_count() == 0


@settings(max_examples=250, deadline=None)
@given(st.lists(operations(4), max_size=50))
def test_model_ipv4(ops: list[tuple[object, ...]]) -> None:
    run_against_model(4, ops)


@settings(max_examples=250, deadline=None)
@given(st.lists(operations(6), max_size=50))
def test_model_ipv6(ops: list[tuple[object, ...]]) -> None:
    run_against_model(6, ops)


@pytest.mark.parametrize("version", [4, 6])
def test_random_against_model(version: int) -> None:
    """Like wireguard-go's random trie test: many prefixes, compare every lookup."""
    rng = random.Random(0x5EED + version)
    width = FAMILIES[version][0]
    peers = [Peer(str(i)) for i in range(16)]
    table: AllowedIPs[Peer] = AllowedIPs()
    model = Model()

    def random_address() -> int:
        # Half fully random, half near earlier structure so lookups hit deep prefixes.
        if rng.random() < 0.5 or not model.entries:
            return rng.getrandbits(width)
        _, net, plen = rng.choice(list(model.entries))
        return net | rng.getrandbits(width - plen) if plen < width else net

    for _ in range(3000):
        roll = rng.random()
        if roll < 0.4:
            address, plen = random_address(), rng.randint(0, width)
            peer = rng.choice(peers)
            table.insert(network(version, address, plen), peer)
            model.insert(version, address, plen, peer)
        elif roll < 0.55:
            if model.entries and rng.random() < 0.7:
                _, address, plen = rng.choice(list(model.entries))
            else:
                address, plen = random_address(), rng.randint(0, width)
            net = network(version, address, plen)
            assert table.remove(net) == model.remove(version, address, plen)
        elif roll < 0.57:
            peer = rng.choice(peers)
            assert table.remove_value(peer) == model.remove_value(peer)
        else:
            address = random_address()
            got = table.lookup(address.to_bytes(width // 8, "big"))
            assert got is model.lookup(version, address)
    assert len(table) == len(model.entries)
    check_structure(table)
    assert list(table.items()) == model.items()
