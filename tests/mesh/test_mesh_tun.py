"""The mesh in TUN mode: every member in a network namespace of its own, on one LAN.

The TUN counterpart of ``test_mesh_cluster.py``. The coordinator runs as always
(embedded, in its own namespace); each node runs ``pyralog node`` with ``[wireguard]
backend = "userspace"`` inside its namespace, so its mesh address is on a real TUN
interface served by its ``pyralog-wg`` child, and stock tools (ping, a plain Python
socket, curl) reach other members through the kernel. Stock WireGuard clients
(wireguard-go + ``wg setconf``) join from the wg-quick file ``pyralog-admin client add``
prints. Traffic only goes between the lab's own namespaces.

The lab itself is ``tunmesh.tun_lab``: teardown stops every node (SIGTERM; each stops its
pyralog-wg) and then checks that no process and no WireGuard interface is left in any
namespace, before ``Lab.close`` removes the namespaces and checks those are gone too.
"""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns import UAPI_DIR, missing_tools
from processes import script_missing, wait_until
from pyralog.wireguard.keys import PrivateKey
from tunmesh import (
    ENROLL_TIMEOUT,
    INFO_PORT,
    MakeTun,
    TunMesh,
    bring_up_client,
    client_config,
    tun_lab,
)

_MISSING = missing_tools()
_NO_ADMIN = script_missing("pyralog-admin") or script_missing("pyralog")
pytestmark = [
    pytest.mark.privileged,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(_MISSING), reason=f"TUN mesh tests need {', '.join(_MISSING)} (bootstrap.sh)"
    ),
    pytest.mark.skipif(_NO_ADMIN is not None, reason=_NO_ADMIN or ""),
]

PROPAGATION_LIMIT = 2.0  # the bar for a membership change to reach every node
RESTART_LIMIT = 5.0  # a restarted node greets its peers; without that, WireGuard waits 15 s


@pytest.fixture
def tun(tmp_path: Path) -> Iterator[MakeTun]:
    """``tun(names, coordinator_toml="")``: a namespace for the coordinator and for each
    name, on one LAN; torn down (and checked clean) whatever the test did."""
    with tun_lab(tmp_path) as make:
        yield make


def _wait_all_peers(t: TunMesh, expected: dict[str, set[str]], timeout: float) -> None:
    for name, peers in expected.items():
        t.mesh.wait_peers(t.nodes[name], peers, timeout=timeout)


def test_four_tun_nodes_mesh_and_follow_membership(tun: MakeTun) -> None:
    names = [f"node-{i}" for i in range(1, 5)]
    t = tun(names)
    t.start_coordinator()
    token = t.mesh.token(reusable=True)
    started = time.monotonic()
    t.start_nodes(names, token)
    up = time.monotonic() - started
    everyone = {*names, "coordinator"}
    _wait_all_peers(t, {n: everyone - {n} for n in names}, timeout=ENROLL_TIMEOUT)
    meshed = time.monotonic() - started
    print(f"4 TUN nodes: all up {up:.2f} s, full peer sets {meshed:.2f} s after start")
    addresses = {n: t.address(n) for n in names}
    assert len(set(addresses.values())) == 4
    for n in names:
        status = t.mesh.node_status(t.nodes[n])
        assert status["backend"] == "userspace"
        # The mesh address is on the node's TUN interface, in its namespace.
        shown = t.namespaces[n].ip("-o", "addr", "show", "dev", t.interfaces[n]).stdout
        assert f"{addresses[n]}/16" in shown, shown

    for a, b in itertools.permutations(names, 2):
        ns = t.namespaces[a]
        # Kernel ping through the TUN interfaces.
        assert ns.ping(addresses[b], count=1, deadline=10), (a, b)
        # TCP from the node's own KernelNetwork (its local socket's probe).
        answer = t.mesh.probe(t.nodes[a], addresses[b])
        assert answer["ok"], (a, b, answer)
        assert answer["answer"]["you"]["node_id"] == a
        assert answer["answer"]["me"]["node_id"] == b
    # A plain socket from a process that knows nothing of Pyralog, and curl.
    whoami = t.whoami(t.namespaces["node-1"], addresses["node-2"])
    assert whoami["status"] == 200, whoami
    assert whoami["body"]["you"]["node_id"] == "node-1"
    assert whoami["body"]["address"] == addresses["node-1"]
    if shutil.which("curl"):
        done = t.namespaces["node-3"].run(
            "curl", "-sS", "--max-time", "10", f"http://{addresses['node-4']}:{INFO_PORT}/v1/whoami"
        )
        assert json.loads(done.stdout)["you"]["node_id"] == "node-3"
    status = t.mesh.status()
    assert {m["node_id"]: m["health"] for m in status["members"]} == dict.fromkeys(names, "healthy")
    # No node's start-up sent the coordinator initiations faster than it answers them.
    print(f"coordinator drops: {status['drops']}")
    assert "initiation_flood" not in status["drops"], status["drops"]

    # Membership changes reach every node within the limit, timed from the admin call
    # (each node's time: when its peers were seen to match, from before pyralog-admin ran).
    def everyone_sees(nodes: list[str], expected: set[str], since: float) -> dict[str, float]:
        took = {}
        for n in nodes:
            t.mesh.wait_peers(t.nodes[n], expected - {n}, timeout=10)
            took[n] = round(time.monotonic() - since, 3)
        return took

    rest = names[:3]
    started = time.monotonic()
    t.mesh.admin("node", "remove", "node-4")
    removed = everyone_sees(rest, {*rest, "coordinator"}, started)
    print(f"node remove: peers followed within (s) {removed}")
    assert max(removed.values()) < PROPAGATION_LIMIT, removed
    assert not t.namespaces["node-1"].ping(addresses["node-4"], count=2, wait=1)
    assert not t.mesh.probe(t.nodes["node-1"], addresses["node-4"], timeout=2)["ok"]

    key = PrivateKey.generate().public_key.to_base64()
    started = time.monotonic()
    t.mesh.admin("node", "add", "--node-id", "manual", "--public-key", key,
                 "--endpoint", f"{t.lan['node-4']}:9")  # fmt: skip
    added = everyone_sees(rest, {*rest, "coordinator", "manual"}, started)
    print(f"node add: peers followed within (s) {added}")
    assert max(added.values()) < PROPAGATION_LIMIT, added
    for n in rest:
        peer = next(p for p in t.mesh.node_status(t.nodes[n])["peers"] if p["node_id"] == "manual")
        assert peer["public_key"] == key and peer["endpoint"] == f"{t.lan['node-4']}:9"
        shown = t.namespaces[n].run("wg", "show", t.interfaces[n], "peers").stdout
        assert key in shown.split()  # the daemon holds it, as `wg` reads it over UAPI


def _peer_keys(config: str) -> list[str]:
    return [
        line.partition("=")[2].strip()
        for line in config.splitlines()
        if line.partition("=")[0].strip() == "PublicKey"
    ]


def test_stock_wireguard_clients_join(tun: MakeTun) -> None:
    names = ["n1", "n2"]
    t = tun([*names, "laptop", "phone"])
    t.start_coordinator()
    t.start_nodes(names, t.mesh.token(reusable=True))
    _wait_all_peers(t, {"n1": {"n2", "coordinator"}, "n2": {"n1", "coordinator"}}, 20)
    coordinator_key = t.mesh.status()["coordinator"]["public_key"]
    coordinator_address = t.mesh.status()["coordinator"]["address"]

    # An admin client: a peer of the coordinator and of every node.
    laptop_conf = client_config(t, "laptop", "admin")
    text = laptop_conf.read_text()
    assert coordinator_key in _peer_keys(text)
    laptop = t.namespaces["laptop"]
    bring_up_client(t, laptop, laptop_conf)
    for n in names:  # the nodes got the client as a peer from the coordinator
        t.mesh.wait_peers(t.nodes[n], {*names, "coordinator", "laptop"} - {n}, timeout=10)
    assert laptop.ping(t.address("n1"), count=1, deadline=10)
    listed = t.admin_in(laptop, "--json", "node", "list")
    assert listed.returncode == 0, listed.stderr
    assert {n["node_id"] for n in json.loads(listed.stdout)} == {"n1", "n2", "laptop"}
    whoami = t.whoami(laptop, t.address("n2"))
    assert whoami["status"] == 200 and whoami["body"]["you"]["node_id"] == "laptop", whoami

    # A plain client: peers only for the nodes (policy client -> node:9092), none for the
    # coordinator, so no path to its API at all.
    phone_conf = client_config(t, "phone", "client")
    text = phone_conf.read_text()
    assert coordinator_key not in _peer_keys(text), text
    assert "# coordinator" not in text and coordinator_address not in text, text
    node_keys = {p["public_key"] for p in t.mesh.admin("node", "list") if p["role"] == "node"}
    assert set(_peer_keys(text)) == node_keys
    phone = t.namespaces["phone"]
    wg = bring_up_client(t, phone, phone_conf)
    assert phone.ping(t.address("n1"), count=1, deadline=10)  # WireGuard lets it through
    # ... but the node's services apply the policy: port 7701 is not 9092.
    whoami = t.whoami(phone, t.address("n1"))
    assert whoami["status"] == 403, whoami
    # Even given a path to the coordinator by hand, the API refuses a client role.
    wg.set("peer", coordinator_key, "endpoint", t.coordinator_endpoint,
           "allowed-ips", f"{coordinator_address}/32")  # fmt: skip
    phone.ip("route", "replace", f"{coordinator_address}/32", "dev", wg.ifname)
    refused = t.admin_in(phone, "node", "list")
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert refused.stderr.strip() == "pyralog-admin: role 'client' may not call GET /v1/nodes"


def test_hub_and_spoke_over_tun(tun: MakeTun) -> None:
    names = ["hub", "s1", "s2"]
    t = tun(names, coordinator_toml='\n[topology]\nkind = "hub-and-spoke"\nhubs = ["hub"]\n')
    t.start_coordinator()
    t.start_nodes(names, t.mesh.token(reusable=True))
    _wait_all_peers(
        t,
        {"hub": {"s1", "s2", "coordinator"}, "s1": {"hub", "coordinator"},
         "s2": {"hub", "coordinator"}},
        timeout=20,
    )  # fmt: skip
    network = t.mesh.status()["settings"]["network"]
    for spoke in ("s1", "s2"):
        peers = {p["node_id"]: p for p in t.mesh.node_status(t.nodes[spoke])["peers"]}
        assert peers["hub"]["allowed_ips"] == [network]  # the hub carries the whole mesh
    hub_peers = {p["node_id"]: p for p in t.mesh.node_status(t.nodes["hub"])["peers"]}
    for spoke in ("s1", "s2"):
        assert hub_peers[spoke]["allowed_ips"] == [f"{t.address(spoke)}/32"]

    def forwarding(name: str) -> str:
        return t.namespaces[name].run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()

    assert wait_until(lambda: forwarding("hub") == "1", 5), "the hub does not forward"
    assert forwarding("s1") == forwarding("s2") == "0"
    s2 = t.address("s2")
    assert t.namespaces["s1"].ping(s2, count=1, deadline=10)
    answer = t.mesh.probe(t.nodes["s1"], s2)
    assert answer["ok"], answer
    assert answer["answer"]["you"]["node_id"] == "s1"
    assert answer["answer"]["me"]["node_id"] == "s2"
    assert t.mesh.probe(t.nodes["s2"], t.address("s1"))["ok"]
    # It went through the hub: s1 holds no peer for s2 at all.
    s2_key = next(n["public_key"] for n in t.mesh.admin("node", "list") if n["node_id"] == "s2")
    assert s2_key not in t.namespaces["s1"].run("wg", "show", t.interfaces["s1"], "peers").stdout


@pytest.mark.parametrize("daemon", ["pyralog-wg", "wireguard-go"])
def test_a_killed_tun_node_leaves_nothing_and_comes_back_meshed(
    tun: MakeTun, daemon: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if daemon == "wireguard-go":  # the node runs wireguard-go instead of pyralog-wg
        monkeypatch.setenv("PYRALOG_WG_DAEMON", "wireguard-go")
    t = tun(["a", "b"])
    t.start_coordinator()
    t.start_nodes(["a", "b"], t.mesh.token(reusable=True))
    _wait_all_peers(t, {"a": {"b", "coordinator"}, "b": {"a", "coordinator"}}, 20)
    a, b, ifname = t.namespaces["a"], t.namespaces["b"], t.interfaces["b"]
    address = t.address("b")
    assert a.ping(address, count=1, deadline=10)  # a now holds a session with b
    node = t.nodes["b"].process
    (child,) = [p for p in b.pids() if p != node.pid]
    assert daemon in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")

    # SIGKILL: the node runs no cleanup at all, yet its daemon and interface go.
    node.send_signal(signal.SIGKILL)
    node.wait(10)

    def gone() -> bool:
        return (
            not b.pids() and ifname not in b.links() and not (UAPI_DIR / f"{ifname}.sock").exists()
        )

    assert wait_until(gone, 10), f"left behind by a killed node: {t.leftovers()}"

    # It restarts on its saved state, on the same interface name, and greets its peers:
    # a, still holding the session b forgot, is not left waiting for WireGuard's retry
    # (15 s) to reach it again.
    t.nodes["b"] = t.mesh.start_node("b", None, prefix=b.argv(), nobody=False)
    started = time.monotonic()
    assert a.ping(address, count=1, deadline=20)
    took = time.monotonic() - started
    print(f"{daemon}: a reached the restarted b {took:.3f} s after it was up")
    assert took < RESTART_LIMIT, took
    assert t.mesh.probe(t.nodes["a"], address)["ok"]
    assert t.mesh.probe(t.nodes["b"], t.address("a"))["ok"]


def test_a_stock_client_reaches_a_restarted_node_at_once(tun: MakeTun) -> None:
    """A stock client (wireguard-go) holds a session with the node; kill -9 and restart
    the node, which forgot it. The coordinator knows no endpoint for a client (it roams),
    but the node kept where the client last reached it and greets it there: without
    that, the client sends into the dead session until its WireGuard gives up (15 s)."""
    t = tun(["n1", "laptop"])
    t.start_coordinator()
    t.start_nodes(["n1"], t.mesh.token(reusable=True))
    laptop, n1 = t.namespaces["laptop"], t.namespaces["n1"]
    bring_up_client(t, laptop, client_config(t, "laptop", "client"))
    t.mesh.wait_peers(t.nodes["n1"], {"coordinator", "laptop"}, timeout=10)
    address = t.address("n1")
    assert laptop.ping(address, count=1, deadline=10)
    state = t.mesh.root / "n1" / "node.key.mesh.json"
    key = next(n["public_key"] for n in t.mesh.admin("node", "list") if n["node_id"] == "laptop")

    def remembered() -> bool:
        roaming = json.loads(state.read_text())["extra"].get("roaming_endpoints", {})
        return roaming.get(key, "").startswith(f"{t.lan['laptop']}:")

    assert wait_until(remembered, 10), state.read_text()
    node = t.nodes["n1"].process
    node.send_signal(signal.SIGKILL)
    node.wait(10)
    ifname = t.interfaces["n1"]
    assert wait_until(lambda: not n1.pids() and ifname not in n1.links(), 10), t.leftovers()
    t.nodes["n1"] = t.mesh.start_node("n1", None, prefix=n1.argv(), nobody=False)
    started = time.monotonic()
    assert laptop.ping(address, count=1, deadline=25)
    took = time.monotonic() - started
    print(f"the stock client reached the restarted node {took:.3f} s after it was up")
    assert took < RESTART_LIMIT, took


CHATTY_DAEMON = textwrap.dedent(
    """
    import asyncio, ipaddress, sys
    from pyralog.link.control import PeerChange, SetRequest
    from pyralog.mesh.backend import BackendSpec
    from pyralog.mesh.backend_userspace import UserspaceBackend
    from pyralog.wireguard.keys import PrivateKey

    async def main(ifname, count):
        address = ipaddress.ip_interface("10.77.0.2/16")
        spec = BackendSpec(PrivateKey.generate(), (address,), 51820, 1420, ifname)
        backend = await UserspaceBackend.start(spec)
        try:
            for i in range(count):
                key = PrivateKey.generate().public_key
                add = PeerChange(key, allowed_ips=[f"10.77.{i // 250 + 1}.{i % 250 + 1}/32"])
                await backend.apply(SetRequest(peers=[add, PeerChange(key, remove=True)]))
            print(len(await backend.peers()), flush=True)
        finally:
            await backend.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def test_the_daemons_log_never_fills_up_and_stalls_it(tun: MakeTun) -> None:
    """pyralog-wg logs every peer change and handshake (its default level in the
    foreground); 64 KiB of that unread in a pipe would block it on its next line."""
    t = tun([])
    ns, ifname = t.namespaces["coordinator"], t.lab.ifname("c")
    count = 400  # 800 lines of about 110 bytes: past a pipe's 64 KiB
    done = ns.run(sys.executable, "-c", CHATTY_DAEMON, ifname, str(count), check=False,
                  timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "0"
    # What the daemon said went on to the node's own log.
    assert done.stderr.count(": added") == count, done.stderr[-3000:]
