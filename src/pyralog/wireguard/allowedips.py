"""Cryptokey routing table: map IP prefixes to peers, look up by longest-prefix match.

Written by hand: no maintained library offers a longest-prefix-match trie with per-value
removal that fits the sans-IO core. The structure follows the Linux kernel's and
wireguard-go's ``allowedips``: a path-compressed binary radix trie per address family,
where every node stores a whole key prefix, so a lookup is a few integer operations per
level instead of one level per bit.

Invariants kept by ``insert`` and ``remove``:

* a node's key has its host bits cleared, and its children extend its prefix;
* a node without a value (a branch point) always has two children, so the trie never
  holds more than ``2 * len - 1`` nodes and shrinks back to nothing when emptied.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Generic, TypeVar

T = TypeVar("T")

Network = IPv4Network | IPv6Network
NetworkLike = Network | str
AddressLike = bytes | bytearray | memoryview | str | IPv4Address | IPv6Address

# A tuple, not a ``X | Y`` union: the union would be rebuilt on every hot-path call.
_BUFFERS = (bytes, bytearray, memoryview)


class _Node(Generic[T]):
    """One prefix: ``key`` (host bits zero) of ``cidr`` bits, and an optional value."""

    __slots__ = ("child", "cidr", "key", "shift", "value")

    def __init__(self, key: int, cidr: int, width: int, value: T | None) -> None:
        self.key = key
        self.cidr = cidr
        # Host bit count; kept so the hot path needs no subtraction per level.
        self.shift = width - cidr
        self.value = value
        self.child: list[_Node[T] | None] = [None, None]


class _Trie(Generic[T]):
    """The trie for one address family (``width`` = 32 or 128 bits)."""

    __slots__ = ("count", "root", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        self.root: _Node[T] | None = None
        self.count = 0  # prefixes holding a value, i.e. len() of this family

    def _replace(self, parent: _Node[T] | None, direction: int, node: _Node[T] | None) -> None:
        if parent is None:
            self.root = node
        else:
            parent.child[direction] = node

    def insert(self, key: int, cidr: int, value: T) -> T | None:
        """Map the prefix to ``value``; return the value it replaces, if any."""
        width = self.width
        shift = width - cidr
        key = key >> shift << shift
        parent: _Node[T] | None = None
        direction = 0
        node = self.root
        while node is not None:
            # Number of leading bits the new prefix shares with this node's prefix.
            common = min(cidr, node.cidr, width - (key ^ node.key).bit_length())
            if common == node.cidr:
                if cidr == node.cidr:
                    # Same prefix: (re)assign, which also turns a branch point into an entry.
                    previous = node.value
                    if previous is None:
                        self.count += 1
                    node.value = value
                    return previous
                parent, direction = node, (key >> (node.shift - 1)) & 1
                node = node.child[direction]
                continue
            # The new prefix diverges from this node's prefix above its end: splice a node
            # in above it, either the new entry itself (it contains the node) or a branch.
            if common == cidr:
                above = _Node(key, cidr, width, value)
            else:
                above = _Node(key >> (width - common) << (width - common), common, width, None)
                above.child[(key >> (above.shift - 1)) & 1] = _Node(key, cidr, width, value)
            above.child[(node.key >> (above.shift - 1)) & 1] = node
            self._replace(parent, direction, above)
            self.count += 1
            return None
        self._replace(parent, direction, _Node(key, cidr, width, value))
        self.count += 1
        return None

    def remove(self, key: int, cidr: int) -> T | None:
        """Remove exactly this prefix; return the value it held (None: not present)."""
        shift = self.width - cidr
        key = key >> shift << shift
        # Grandparent and parent links are all that pruning needs.
        grandparent: _Node[T] | None = None
        grand_dir = 0
        parent: _Node[T] | None = None
        direction = 0
        node = self.root
        while node is not None and node.cidr < cidr:
            if (key ^ node.key) >> node.shift:
                return None
            grandparent, grand_dir = parent, direction
            parent, direction = node, (key >> (node.shift - 1)) & 1
            node = node.child[direction]
        if node is None or node.cidr != cidr or node.key != key or node.value is None:
            return None
        removed = node.value
        node.value = None
        self.count -= 1
        left, right = node.child
        if left is not None and right is not None:
            return removed  # still needed as a branch point
        only = left if left is not None else right
        self._replace(parent, direction, only)
        if only is None and parent is not None and parent.value is None:
            # The parent was a branch point and has one child left: splice it out too.
            self._replace(grandparent, grand_dir, parent.child[1 - direction])
        return removed

    def walk(self) -> Iterator[_Node[T]]:
        """Pre-order, left first: yields nodes sorted by (address, prefix length)."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node is not None:
                yield node
                stack.append(node.child[1])
                stack.append(node.child[0])


class AllowedIPs(Generic[T]):
    """Map IPv4/IPv6 prefixes to values (peers); look up addresses by longest prefix.

    Values are compared by identity and must not be ``None`` (``None`` means "no route").
    """

    __slots__ = ("_by_value", "_v4", "_v6")

    def __init__(self) -> None:
        self._v4: _Trie[T] = _Trie(32)
        self._v6: _Trie[T] = _Trie(128)
        # id(value) -> (value, its prefixes as (version, key, cidr)): makes entries() and
        # remove_value() proportional to one peer's prefixes, not to the whole table.
        self._by_value: dict[int, tuple[T, set[tuple[int, int, int]]]] = {}

    def _prefix(self, network: NetworkLike) -> tuple[_Trie[T], int, int]:
        if isinstance(network, str):
            # strict=False masks host bits: "10.0.0.1/24" means 10.0.0.0/24.
            network = ipaddress.ip_network(network, strict=False)
        elif not isinstance(network, IPv4Network | IPv6Network):
            raise TypeError(f"expected an IP network or string, got {type(network).__name__}")
        trie = self._v4 if network.version == 4 else self._v6
        return trie, int(network.network_address), network.prefixlen

    def insert(self, network: NetworkLike, value: T) -> None:
        """Map ``network`` to ``value``, replacing (moving) any existing mapping."""
        if value is None:
            raise TypeError("value must not be None")
        trie, key, cidr = self._prefix(network)
        entry = (trie.width, key >> (trie.width - cidr) << (trie.width - cidr), cidr)
        previous = trie.insert(key, cidr, value)
        if previous is not None and previous is not value:
            self._unindex(previous, entry)
        self._by_value.setdefault(id(value), (value, set()))[1].add(entry)

    def _unindex(self, value: T, entry: tuple[int, int, int]) -> None:
        held = self._by_value.get(id(value))
        if held is not None:
            held[1].discard(entry)
            if not held[1]:
                del self._by_value[id(value)]

    def remove(self, network: NetworkLike) -> bool:
        """Remove exactly this prefix; return whether it was present."""
        trie, key, cidr = self._prefix(network)
        removed = trie.remove(key, cidr)
        if removed is None:
            return False
        self._unindex(
            removed, (trie.width, key >> (trie.width - cidr) << (trie.width - cidr), cidr)
        )
        return True

    def remove_value(self, value: T) -> int:
        """Remove every prefix mapped to ``value`` (by identity); return how many."""
        held = self._by_value.pop(id(value), None)
        if held is None or held[0] is not value:
            return 0
        for width, key, cidr in held[1]:
            (self._v4 if width == 32 else self._v6).remove(key, cidr)
        return len(held[1])

    def lookup(self, address: AddressLike) -> T | None:
        """Return the value of the longest prefix containing ``address``, or ``None``.

        The hot path takes the raw 4- or 16-byte address from an IP header; any other
        length has no route. ``str`` and ``ipaddress`` addresses are accepted too.
        """
        if not isinstance(address, _BUFFERS):
            address = self._packed(address)
        size = len(address)
        if size == 4:
            node = self._v4.root
        elif size == 16:
            node = self._v6.root
        else:
            return None
        key = int.from_bytes(address, "big")
        found = None
        while node is not None:
            shift = node.shift
            if (key ^ node.key) >> shift:
                break  # diverged from this prefix; nothing deeper can match
            if node.value is not None:
                found = node.value
            if not shift:
                break  # host route: no children
            node = node.child[(key >> (shift - 1)) & 1]
        return found

    @staticmethod
    def _packed(address: str | IPv4Address | IPv6Address) -> bytes:
        """The convenience (slow) branch of ``lookup``; malformed strings raise ValueError."""
        if isinstance(address, str):
            address = ipaddress.ip_address(address)
        elif not isinstance(address, IPv4Address | IPv6Address):
            raise TypeError(f"expected an IP address, got {type(address).__name__}")
        return address.packed

    def entries(self, value: T) -> list[Network]:
        """Prefixes mapped to ``value``: IPv4 first, then by address and prefix length."""
        held = self._by_value.get(id(value))
        if held is None or held[0] is not value:
            return []
        return [
            IPv4Network((key, cidr)) if width == 32 else IPv6Network((key, cidr))
            for width, key, cidr in sorted(held[1])
        ]

    def items(self) -> Iterator[tuple[Network, T]]:
        """Iterate over (network, value) in ``entries`` order; a snapshot, safe to mutate."""
        pairs: list[tuple[Network, T]] = []
        for trie, cls in ((self._v4, IPv4Network), (self._v6, IPv6Network)):
            for node in trie.walk():
                if node.value is not None:
                    pairs.append((cls((node.key, node.cidr)), node.value))
        return iter(pairs)

    def __len__(self) -> int:
        return self._v4.count + self._v6.count

    def clear(self) -> None:
        self._v4 = _Trie(32)
        self._v6 = _Trie(128)
        self._by_value.clear()

    def _node_count(self) -> int:
        """Nodes in both tries, branch points included (for tests of pruning)."""
        return sum(1 for trie in (self._v4, self._v6) for _ in trie.walk())
