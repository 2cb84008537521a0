"""Topologies and role policy, end to end in embedded mode: hub-and-spoke forwarding,
regions joined by gateways, and a policy change pushed to every member."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from meshlab import MeshLab, mesh_lab
from processes import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def labs() -> Iterator[Callable[[str], MeshLab]]:
    with contextlib.ExitStack() as stack:

        def factory(extra: str = "") -> MeshLab:
            return stack.enter_context(mesh_lab(extra))

        yield factory


def test_hub_and_spoke_spokes_reach_each_other_through_the_hub(labs) -> None:
    lab = labs('[topology]\nkind = "hub-and-spoke"\nhubs = ["hub"]\n')
    lab.start_coordinator()
    token = lab.token()
    hub, s1, s2 = (lab.start_node(n, token) for n in ("hub", "s1", "s2"))
    lab.wait_peers(hub, {"s1", "s2", "coordinator"}, timeout=15)
    lab.wait_peers(s1, {"hub", "coordinator"})
    lab.wait_peers(s2, {"hub", "coordinator"})
    spoke_view = lab.node_status(s1)["peers"]
    hub_peer = next(p for p in spoke_view if p["node_id"] == "hub")
    assert hub_peer["allowed_ips"] == ["10.77.0.0/16"]  # the hub carries the mesh for spokes
    answer = lab.probe(s1, lab.address_of(s2))
    assert answer["ok"], answer
    # Cryptokey routing plus the directory still name the real caller behind the hub.
    assert answer["answer"]["you"]["node_id"] == "s1"
    assert lab.probe(s2, lab.address_of(s1))["ok"]
    # Two clients on spokes: each reaches a node through the hub (whose identity
    # service then refuses the client's role), but never the other client.
    c1 = lab.start_node("c1", lab.token(role="client"))
    c2 = lab.start_node("c2", lab.token(role="client"))
    lab.wait_peers(c1, {"hub", "coordinator"})
    lab.wait_peers(hub, {"s1", "s2", "c1", "c2", "coordinator"})
    to_node = lab.probe(c1, lab.address_of(s1))
    assert to_node["status"] == 403, to_node  # delivered, then refused by policy
    to_client = lab.probe(c1, lab.address_of(c2), timeout=2)
    assert not to_client["ok"] and to_client["status"] == 0, to_client  # no path at all


def test_regions_connect_through_their_gateways(labs) -> None:
    lab = labs(
        '[topology]\nkind = "regions"\n'
        '[regions.east]\nnetwork = "10.77.1.0/24"\n'
        '[regions.west]\nnetwork = "10.77.2.0/24"\n'
    )
    lab.start_coordinator()

    def token(region: str, role: str = "node") -> str:
        return lab.admin("token", "create", "--region", region, "--role", role,
                         "--reusable")["token"]  # fmt: skip

    gw_e = lab.start_node("gw-e", token("east", "gateway"))
    gw_w = lab.start_node("gw-w", token("west", "gateway"))
    e1 = lab.start_node("e1", token("east"))
    w1 = lab.start_node("w1", token("west"))
    lab.wait_peers(e1, {"gw-e", "coordinator"}, timeout=15)
    lab.wait_peers(w1, {"gw-w", "coordinator"}, timeout=15)
    lab.wait_peers(gw_e, {"e1", "gw-w", "coordinator"}, timeout=15)
    assert lab.address_of(e1).startswith("10.77.1.")
    assert lab.address_of(w1).startswith("10.77.2.")
    gateway = next(p for p in lab.node_status(e1)["peers"] if p["node_id"] == "gw-e")
    assert "10.77.2.0/24" in gateway["allowed_ips"]
    answer = lab.probe(e1, lab.address_of(w1))  # e1 -> gw-e -> gw-w -> w1 and back
    assert answer["ok"], answer
    assert answer["answer"]["you"]["node_id"] == "e1"
    assert lab.probe(w1, lab.address_of(e1))["ok"]
    assert lab.probe(gw_w, lab.address_of(e1))["ok"]


def test_policy_changes_are_pushed_to_every_member(labs) -> None:
    lab = labs("")
    coord = lab.start_coordinator()
    node = lab.start_node("broker", lab.token())
    laptop = lab.start_node("laptop", lab.token(role="client"))
    phone = lab.start_node("phone", lab.token(role="client"))
    lab.wait_peers(laptop, {"broker", "coordinator"}, timeout=15)
    lab.wait_peers(phone, {"broker", "coordinator"}, timeout=15)  # clients never see clients
    lab.wait_peers(node, {"laptop", "phone", "coordinator"}, timeout=15)
    broker = lab.address_of(node)
    refused = lab.probe(laptop, broker)  # clients may reach port 9092 only
    assert not refused["ok"] and refused["status"] == 403, refused
    # Allow clients the identity port and each other; SIGHUP pushes it.
    config = coord.directory / "coordinator.toml"
    config.write_text(config.read_text() + '[policy]\nclient = ["node:9092,7701", "client"]\n')
    started = time.monotonic()
    coord.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: lab.probe(laptop, broker, timeout=1)["ok"], 5, interval=0.02)
    lab.wait_peers(laptop, {"broker", "phone", "coordinator"}, timeout=5)
    took = time.monotonic() - started
    assert took < 2.0, f"the policy change took {took:.2f} s to reach the members"
    assert lab.probe(laptop, lab.address_of(phone))["ok"]
    # A broken config on reload is refused and changes nothing.
    config.write_text(config.read_text() + "[policy]\n")
    coord.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload refused" in coord.output(), 5)
    assert lab.probe(laptop, broker)["ok"]
