"""Mesh addresses from node ids: deterministic, collision-free, bounded."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyralog.mesh.addressing import AddressError, derive_address, preferred_offset

NET = ipaddress.ip_network("10.0.0.0/24")


def test_numeric_ids_are_host_numbers() -> None:
    assert derive_address("1", NET) == ipaddress.ip_address("10.0.0.1")
    assert derive_address("254", NET) == ipaddress.ip_address("10.0.0.254")
    # Out of range for the network: hashed like any other id, still inside it.
    assert derive_address("255", NET) in NET
    assert derive_address("0", NET) != ipaddress.ip_address("10.0.0.0")


def test_names_hash_to_the_same_address_everywhere() -> None:
    a = derive_address("node-eu-1", NET)
    assert a == derive_address("node-eu-1", NET) and a in NET
    assert a not in (NET.network_address, NET.broadcast_address)
    # The hash spreads names over the network (20 names, 254 hosts: few collisions).
    offsets = {preferred_offset(f"node-{i}", NET) for i in range(20)}
    assert len(offsets) >= 17


def test_a_collision_moves_the_newcomer_to_the_next_free_address() -> None:
    first = derive_address("3", NET)
    assert derive_address("3", NET, taken={first}) == ipaddress.ip_address("10.0.0.4")
    taken = {ipaddress.ip_address(f"10.0.0.{i}") for i in (3, 4, 5)}
    assert derive_address("3", NET, taken=taken) == ipaddress.ip_address("10.0.0.6")
    # Wraps round past the end, never onto the broadcast or network address.
    taken = {ipaddress.ip_address("10.0.0.254")}
    assert derive_address("254", NET, taken=taken) == ipaddress.ip_address("10.0.0.1")


def test_reserved_addresses_are_never_given() -> None:
    coordinator = ipaddress.ip_address("10.0.0.1")
    assert derive_address("1", NET, reserved={coordinator}) == ipaddress.ip_address("10.0.0.2")


def test_a_full_network_is_an_error_not_a_loop() -> None:
    small = ipaddress.ip_network("10.0.0.0/30")  # two hosts: .1 and .2
    taken = {ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2")}
    with pytest.raises(AddressError, match=r"no free address left in 10\.0\.0\.0/30"):
        derive_address("x", small, taken=taken)
    with pytest.raises(AddressError, match="empty"):
        derive_address(" ", NET)


def test_ipv6_and_point_to_point_networks() -> None:
    v6 = ipaddress.ip_network("fd00:1::/64")
    a = derive_address("node-1", v6)
    assert a in v6 and a != v6.network_address
    p2p = ipaddress.ip_network("10.0.0.0/31")
    assert {derive_address("0", p2p), derive_address("1", p2p)} == set(p2p)


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(st.lists(st.text(min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=60))
def test_assigning_in_turn_never_repeats_an_address(ids: list[str]) -> None:
    taken: set = set()
    for node_id in dict.fromkeys(ids):  # each id once, as the coordinator would
        address = derive_address(node_id, NET, taken=taken)
        assert address in NET and address not in taken
        assert address not in (NET.network_address, NET.broadcast_address)
        taken.add(address)
