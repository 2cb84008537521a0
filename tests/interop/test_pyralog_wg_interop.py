"""pyralog-wg against wireguard-go (and itself), each in its own network namespace.

Two namespaces joined by a veth pair (172.31.X.1 <-> .2, fd00:31:X::1 <-> ::2); a
WireGuard daemon in each, configured only with ``wg set``/``wg setconf``/``wg syncconf``
(or by ``wg-quick``, which does the same), tunnel addresses 10.31.N.1 <-> .2 and
fd00:131:N::1 <-> ::2. Side "a" is wireguard-go unless a test says otherwise; side "b"
is pyralog-wg. Nothing leaves the lab's namespaces; ``Lab`` tears everything down.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netns import (
    DEFAULT_PORT,
    PYRALOG_WG,
    UAPI_DIR,
    Capture,
    Datagram,
    Lab,
    Namespace,
    Veth,
    WireGuard,
    daemon_env,
    endpoint_text,
    expected_digest,
    genkey,
    genpsk,
    missing_tools,
    pid_alive,
    tcp_transfer,
)
from processes import wait_until

_MISSING = missing_tools()

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(bool(_MISSING), reason=f"needs {', '.join(_MISSING)}"),
]
needs_tcpdump = pytest.mark.skipif(
    shutil.which("tcpdump") is None, reason="needs tcpdump to watch the wire"
)

INITIATION, RESPONSE, COOKIE_REPLY, TRANSPORT = 1, 2, 3, 4
MB = 1_000_000


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as the_lab:
        yield the_lab


@dataclass
class Pair:
    link: Veth
    a: WireGuard  # in link.a, outer addresses .1 / ::1
    b: WireGuard  # in link.b, outer addresses .2 / ::2

    @property
    def ns_a(self) -> Namespace:
        return self.link.a

    @property
    def ns_b(self) -> Namespace:
        return self.link.b

    @property
    def b_endpoint(self) -> str:
        return endpoint_text(self.link.b4, self.b.port)


def make_pair(
    lab: Lab,
    impl_a: str = "go",
    impl_b: str = "pyralog",
    *,
    outer6: bool = False,
    psk_a: str | None = None,
    psk_b: str | None = None,
    a_thinks_b_is: str | None = None,
    b_thinks_a_is: str | None = None,
    env_b: dict[str, str] | None = None,
) -> Pair:
    """Two namespaces, a veth between them, a daemon in each, peered both ways with
    endpoints (so either side can initiate), addressed and up."""
    link = lab.veth(lab.namespace("a"), lab.namespace("b"))
    net = lab.tunnel_net()
    a = lab.wireguard(link.a, impl_a, net=net, host=1)
    b = lab.wireguard(link.b, impl_b, net=net, host=2, env=env_b)
    a.configure()
    b.configure()
    a_ep, b_ep = (link.a6, link.b6) if outer6 else (link.a4, link.b4)
    allowed_a = [f"{b.ip4}/32", f"{b.ip6}/128"]
    allowed_b = [f"{a.ip4}/32", f"{a.ip6}/128"]
    a.add_peer(a_thinks_b_is or b.public_key, endpoint=b_ep, allowed_ips=allowed_a, psk=psk_a)
    b.add_peer(b_thinks_a_is or a.public_key, endpoint=a_ep, allowed_ips=allowed_b, psk=psk_b)
    a.up()
    b.up()
    return Pair(link, a, b)


def pings_fail(ns: Namespace, address: str) -> bool:
    return not ns.ping(address, count=2, interval=0.3)


def from_b(datagrams: list[Datagram], pair: Pair) -> list[Datagram]:
    """What pyralog-wg (side b) sent from its WireGuard port."""
    b_addresses = {pair.link.b4, pair.link.b6}
    return [d for d in datagrams if d.src in b_addresses and d.sport == pair.b.port]


def summary(datagrams: list[Datagram]) -> list[tuple[str, int, int, int]]:
    return [(d.src, d.sport, d.type, len(d.payload)) for d in datagrams]


# -- handshakes and pings ------------------------------------------------------------------


@pytest.mark.parametrize("initiator", ["wireguard-go", "pyralog-wg"])
def test_handshake_and_ping_both_ways(lab: Lab, initiator: str) -> None:
    p = make_pair(lab)
    go, ours = p.a, p.b
    first, second = (p.ns_a, p.ns_b) if initiator == "wireguard-go" else (p.ns_b, p.ns_a)
    first_peer, second_peer = (ours, go) if initiator == "wireguard-go" else (go, ours)

    assert go.handshake_with(ours) == 0
    assert ours.handshake_with(go) == 0
    assert first.ping(first_peer.ip4), "the initiator's IPv4 ping went unanswered"
    assert go.handshake_with(ours) > 0
    assert ours.handshake_with(go) > 0
    role = "initiated by peer" if initiator == "wireguard-go" else "initiated by us"
    assert f"handshake completed ({role})" in ours.log_text()

    assert second.ping(second_peer.ip4), "the responder's IPv4 ping went unanswered"
    assert first.ping(first_peer.ip6), "IPv6 inside the tunnel, initiator side"
    assert second.ping(second_peer.ip6), "IPv6 inside the tunnel, responder side"
    # One handshake carried everything.
    assert ours.log_text().count("handshake completed") == 1
    dump_go, dump_ours = go.peer(ours.public_key), ours.peer(go.public_key)
    assert dump_ours.rx > 0
    assert dump_ours.tx > 0
    assert dump_go.endpoint == p.b_endpoint
    assert dump_ours.endpoint == endpoint_text(p.link.a4, go.port)


def test_ipv6_outer_endpoints(lab: Lab) -> None:
    p = make_pair(lab, outer6=True)
    assert p.ns_a.ping(p.b.ip4)
    assert p.ns_b.ping(p.a.ip4)
    assert p.ns_a.ping(p.b.ip6)
    assert p.ns_b.ping(p.a.ip6)
    assert p.b.peer(p.a.public_key).endpoint == f"[{p.link.a6}]:{p.a.port}"
    assert p.a.peer(p.b.public_key).endpoint == f"[{p.link.b6}]:{p.b.port}"
    assert p.a.handshake_with(p.b) > 0
    assert p.b.handshake_with(p.a) > 0


# -- bulk data ------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["wireguard-go to pyralog-wg", "pyralog-wg to wireguard-go"])
def test_20_mb_of_tcp_arrive_intact(lab: Lab, direction: str) -> None:
    p = make_pair(lab)
    assert p.ns_a.ping(p.b.ip4, count=1)
    size = 20 * MB
    if direction.startswith("wireguard-go"):
        sender, receiver, address = p.ns_a, p.ns_b, p.b.ip4
    else:
        sender, receiver, address = p.ns_b, p.ns_a, p.a.ip4
    result = tcp_transfer(sender, receiver, address, size, seed=2013, timeout=60)
    print(f"{direction}: {size / result.seconds / MB:.1f} MB/s")
    assert result.received == size
    assert result.digest == expected_digest(size, 2013)
    assert p.b.peer(p.a.public_key).rx > (size if sender is p.ns_a else 0)
    assert p.b.peer(p.a.public_key).tx > (size if sender is p.ns_b else 0)


def test_pyralog_wg_on_both_sides(lab: Lab) -> None:
    p = make_pair(lab, "pyralog", "pyralog")
    assert p.ns_a.ping(p.b.ip4)
    assert p.ns_b.ping(p.a.ip4)
    assert p.ns_a.ping(p.b.ip6)
    assert p.ns_b.ping(p.a.ip6)
    assert p.a.handshake_with(p.b) > 0
    assert p.b.handshake_with(p.a) > 0
    assert "handshake completed (initiated by us)" in p.a.log_text()
    assert "handshake completed (initiated by peer)" in p.b.log_text()
    size = 4 * MB
    for sender, receiver, address, seed in (
        (p.ns_a, p.ns_b, p.b.ip4, 1),
        (p.ns_b, p.ns_a, p.a.ip6, 2),
    ):
        result = tcp_transfer(sender, receiver, address, size, seed=seed, timeout=60)
        assert result.received == size
        assert result.digest == expected_digest(size, seed)


# -- keys -----------------------------------------------------------------------------------


def test_preshared_key_on_both_sides(lab: Lab) -> None:
    psk = genpsk()
    p = make_pair(lab, psk_a=psk, psk_b=psk)
    assert p.ns_a.ping(p.b.ip4)
    assert p.ns_b.ping(p.a.ip4)
    assert p.b.peer(p.a.public_key).preshared_key == psk
    assert p.a.handshake_with(p.b) > 0
    assert p.b.handshake_with(p.a) > 0


@pytest.mark.parametrize("command", ["set", "syncconf"])
@pytest.mark.parametrize("initiator", ["wireguard-go", "pyralog-wg"])
def test_preshared_key_rolled_over_on_one_side_first(
    lab: Lab, initiator: str, command: str
) -> None:
    """pyralog-wg switches to a new PSK (``wg set`` or ``wg syncconf``) while wireguard-go
    (which knows nothing of roll-overs) still has the old one: a session still forms,
    whoever initiates (at most one REKEY_TIMEOUT retry), because the replaced key counts
    for the grace period."""
    old, new = genpsk(), genpsk()
    p = make_pair(lab, psk_a=old, psk_b=old)
    if command == "set":
        p.b.set("peer", p.a.public_key, "preshared-key", str(lab.write_secret(new)))
    else:
        conf = p.b.wg("showconf", p.b.ifname).replace(old, new)
        path = lab.tmp / f"{p.b.ifname}-new.conf"
        path.write_text(conf)
        p.b.wg("syncconf", p.b.ifname, str(path))
    assert p.b.peer(p.a.public_key).preshared_key == new
    if initiator == "wireguard-go":
        assert p.ns_a.ping(p.b.ip4, count=1, deadline=15)
    else:
        assert p.ns_b.ping(p.a.ip4, count=1, deadline=15)
    assert p.a.handshake_with(p.b) > 0 and p.b.handshake_with(p.a) > 0
    # Once wireguard-go has the new key too, handshakes use it.
    p.a.set("peer", p.b.public_key, "preshared-key", str(lab.write_secret(new)))
    assert p.ns_a.ping(p.b.ip4, count=2)


@needs_tcpdump
@pytest.mark.parametrize("initiator", ["wireguard-go", "pyralog-wg"])
def test_wrong_preshared_key_never_carries_data(lab: Lab, initiator: str) -> None:
    p = make_pair(lab, psk_a=genpsk(), psk_b=genpsk())
    capture = Capture(p.ns_b, p.link.b_if)
    if initiator == "wireguard-go":
        assert pings_fail(p.ns_a, p.b.ip4)
    else:
        assert pings_fail(p.ns_b, p.a.ip4)
    time.sleep(0.3)
    seen = capture.stop()
    # The PSK only enters at the response: the responder answers the initiation, but the
    # initiator cannot open the response, so no session forms and no data ever flows.
    assert any(d.type == INITIATION for d in seen), summary(seen)
    assert [d for d in seen if d.type == TRANSPORT] == [], summary(seen)
    assert p.a.handshake_with(p.b) == 0
    assert p.b.handshake_with(p.a) == 0
    # pyralog-wg answers initiations (wireguard-go's case) or retries its own; nothing else.
    allowed = {RESPONSE} if initiator == "wireguard-go" else {INITIATION}
    assert {d.type for d in from_b(seen, p)} <= allowed, summary(seen)


@needs_tcpdump
@pytest.mark.parametrize("unknown", ["pyralog-wg lacks wireguard-go's key", "wrong key for us"])
def test_unknown_public_key_gets_no_answer_at_all(lab: Lab, unknown: str) -> None:
    stranger = genkey().public
    if unknown.startswith("pyralog"):
        # The initiation's mac1 is right (wireguard-go knows our key), its sender is not a peer.
        p = make_pair(lab, b_thinks_a_is=stranger)
    else:
        # wireguard-go believes we are someone else: mac1 is keyed to the wrong public key.
        p = make_pair(lab, a_thinks_b_is=stranger)
    capture = Capture(p.ns_b, p.link.b_if)
    assert pings_fail(p.ns_a, p.b.ip4)
    time.sleep(0.5)
    seen = capture.stop()
    initiations = [
        d for d in seen if d.src == p.link.a4 and d.type == INITIATION and len(d.payload) == 148
    ]
    assert initiations, f"wireguard-go sent no initiation: {summary(seen)}"
    assert from_b(seen, p) == [], f"pyralog-wg answered: {summary(seen)}"
    assert [d for d in seen if d.src == p.link.b4] == []
    assert p.b.dump()[0].latest_handshake == 0
    assert p.b.dump()[0].tx == 0


# -- roaming --------------------------------------------------------------------------------


def test_roaming_wireguard_go_changes_its_address_mid_ping(lab: Lab) -> None:
    p = make_pair(lab)
    assert p.ns_a.ping(p.b.ip4, count=1)
    old = endpoint_text(p.link.a4, p.a.port)
    assert p.b.peer(p.a.public_key).endpoint == old
    new_address = f"172.31.{p.link.net}.11"
    new = endpoint_text(new_address, p.a.port)
    # Keep the new (secondary) address when the old primary one goes.
    p.ns_a.run("sysctl", "-qw", f"net.ipv4.conf.{p.link.a_if}.promote_secondaries=1")

    count = 50
    pinger = p.ns_a.popen(
        "ping", "-n", "-c", str(count), "-i", "0.1", "-W", "1", p.b.ip4,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(1.0)  # ~10 echoes over the old address
    p.ns_a.ip("address", "add", f"{new_address}/24", "dev", p.link.a_if)
    p.ns_a.ip("address", "del", f"{p.link.a4}/24", "dev", p.link.a_if)
    # wireguard-go pins the source address it last used (sticky sockets) and, this version,
    # does not drop a pin to a deleted address (ENETUNREACH): re-setting the endpoint does.
    p.a.set("peer", p.b.public_key, "endpoint", p.b_endpoint)
    assert wait_until(lambda: p.b.peer(p.a.public_key).endpoint == new, 3), p.b.dump()
    out, _ = pinger.communicate(timeout=30)

    answered = {int(m) for m in re.findall(r"icmp_seq=(\d+) ttl", out)}
    lost = sorted(set(range(1, count + 1)) - answered)
    print(f"lost around the move: {lost}")
    assert len(lost) <= 3, f"lost echoes {lost}:\n{out}"
    assert set(range(count - 20, count + 1)) <= answered, f"traffic stopped after the move:\n{out}"
    assert f"endpoint now {new}" in p.b.log_text()
    # Both directions work from the new address, and pyralog-wg keeps answering it.
    assert p.ns_b.ping(p.a.ip4)
    assert p.ns_a.ping(p.b.ip6)
    assert p.b.peer(p.a.public_key).endpoint == new


# -- cookies --------------------------------------------------------------------------------


@needs_tcpdump
def test_cookie_reply_under_load_and_wireguard_go_still_connects(lab: Lab) -> None:
    p = make_pair(lab, env_b={"PYRALOG_FORCE_UNDER_LOAD": "1"})
    capture = Capture(p.ns_b, p.link.b_if)
    # wireguard-go waits REKEY_TIMEOUT (5 s) after a cookie before initiating again, with mac2.
    started = time.monotonic()
    assert p.ns_a.ping(p.b.ip4, count=1, interval=0.5, deadline=15), "no handshake via cookie"
    elapsed = time.monotonic() - started
    seen = capture.stop()
    ours = from_b(seen, p)
    cookies = [d for d in ours if d.type == COOKIE_REPLY]
    assert cookies, f"no cookie reply: {summary(seen)}"
    assert all(len(d.payload) == 64 and d.payload[1:4] == b"\0\0\0" for d in cookies)
    assert all(d.dst == p.link.a4 for d in cookies)
    initiations = [d for d in seen if d.src == p.link.a4 and d.type == INITIATION]
    assert len(initiations) >= 2, summary(seen)
    responses = [d for d in ours if d.type == RESPONSE]
    assert responses, summary(seen)
    # The first initiation got the cookie, not a response; a later one (with mac2) did.
    assert cookies[0].time < responses[0].time
    assert initiations[0].time <= cookies[0].time
    assert elapsed < 15
    assert p.a.handshake_with(p.b) > 0
    assert p.b.handshake_with(p.a) > 0
    assert p.ns_b.ping(p.a.ip4)


# -- configuration changes -------------------------------------------------------------------


def test_removing_the_peer_cuts_traffic_and_re_adding_restores_it(lab: Lab) -> None:
    p = make_pair(lab)
    assert p.ns_a.ping(p.b.ip4)
    p.b.set("peer", p.a.public_key, "remove")
    assert p.b.dump() == []
    assert pings_fail(p.ns_a, p.b.ip4)
    assert pings_fail(p.ns_b, p.a.ip4)

    p.b.add_peer(p.a, endpoint=p.link.a4)
    # wireguard-go still holds the old session; a packet from us starts a fresh one.
    assert p.ns_b.ping(p.a.ip4)
    assert p.ns_a.ping(p.b.ip4)
    assert p.b.handshake_with(p.a) > 0


@needs_tcpdump
def test_persistent_keepalive_on_the_wire(lab: Lab) -> None:
    p = make_pair(lab)
    assert p.ns_b.ping(p.a.ip4, count=1)
    capture = Capture(p.ns_b, p.link.b_if)
    started = time.monotonic()
    p.b.set("peer", p.a.public_key, "persistent-keepalive", "1")
    assert p.b.peer(p.a.public_key).keepalive == "1"

    def keepalives() -> list[Datagram]:
        return [d for d in from_b(capture.datagrams(), p) if d.type == TRANSPORT]

    wait_until(lambda: len(keepalives()) >= 2, 3.0, interval=0.1)
    elapsed = time.monotonic() - started
    seen = capture.stop()
    sent = [d for d in from_b(seen, p) if d.type == TRANSPORT]
    assert len(sent) >= 2, f"{len(sent)} keepalives in {elapsed:.1f} s: {summary(seen)}"
    assert all(len(d.payload) == 32 for d in sent), summary(sent)
    assert all(d.dst == p.link.a4 and d.dport == p.a.port for d in sent)
    assert elapsed < 3.5


def test_showconf_round_trips_through_syncconf(lab: Lab) -> None:
    p = make_pair(lab)
    assert p.ns_a.ping(p.b.ip4)
    before = p.b.peer(p.a.public_key).latest_handshake
    conf = p.b.wg("showconf", p.b.ifname)
    assert f"PrivateKey = {p.b.keys.private}" in conf
    assert f"ListenPort = {p.b.port}" in conf
    assert f"PublicKey = {p.a.public_key}" in conf
    assert f"Endpoint = {p.link.a4}:{p.a.port}" in conf

    path = lab.tmp / f"{p.b.ifname}.conf"
    path.write_text(conf)
    p.b.wg("syncconf", p.b.ifname, str(path))
    assert p.b.wg("showconf", p.b.ifname) == conf

    changed = re.sub(r"(?m)^AllowedIPs = .*$", f"AllowedIPs = {p.a.ip4}/32, 192.0.2.0/24", conf)
    assert changed != conf
    path.write_text(changed)
    p.b.wg("syncconf", p.b.ifname, str(path))
    assert p.b.wg("show", p.b.ifname, "allowed-ips").split() == [
        p.a.public_key,
        f"{p.a.ip4}/32",
        "192.0.2.0/24",
    ]
    assert p.b.wg("showconf", p.b.ifname) == changed
    # The session survived; IPv6 from wireguard-go's address is no longer allowed in.
    assert p.b.peer(p.a.public_key).latest_handshake == before
    assert p.ns_a.ping(p.b.ip4)
    assert pings_fail(p.ns_a, p.b.ip6)


# -- wg-quick ---------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("wg-quick") is None, reason="needs wg-quick")
def test_wg_quick_up_and_down_with_pyralog_wg(lab: Lab) -> None:
    link = lab.veth(lab.namespace("a"), lab.namespace("q"))
    net = lab.tunnel_net()
    go = lab.wireguard(link.a, "go", net=net, host=1)
    keys = genkey()
    name = lab.ifname("q")
    ip4, ip6 = f"10.31.{net}.2", f"fd00:131:{net}::2"
    go.configure()
    go.add_peer(keys.public, endpoint=link.b4, allowed_ips=[f"{ip4}/32", f"{ip6}/128"])
    go.up()

    conf = lab.tmp / "quick" / f"{name}.conf"
    conf.parent.mkdir(mode=0o700)
    conf.write_text(
        f"[Interface]\nPrivateKey = {keys.private}\nAddress = {ip4}/24, {ip6}/64\n"
        f"ListenPort = {DEFAULT_PORT}\n\n"
        f"[Peer]\nPublicKey = {go.public_key}\nAllowedIPs = {go.ip4}/32, {go.ip6}/128\n"
        f"Endpoint = {link.a4}:{go.port}\n"
    )
    conf.chmod(0o600)
    env = daemon_env(
        PATH=f"{Path(PYRALOG_WG).parent}:{os.environ.get('PATH', '')}",
        WG_QUICK_USERSPACE_IMPLEMENTATION="pyralog-wg",
    )
    ns = link.b
    up = ns.run("wg-quick", "up", str(conf), env=env, timeout=30, check=False)
    assert up.returncode == 0, up.stderr
    assert "pyralog-wg" in up.stderr  # wg-quick shows the command it ran
    assert name in ns.links()
    daemons = [pid for pid in ns.pids() if "pyralog-wg" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(daemons) == 1, ns.pids()
    sock = UAPI_DIR / f"{name}.sock"
    assert sock.exists()

    assert ns.ping(go.ip4)
    assert link.a.ping(ip4)
    assert ns.ping(go.ip6)
    assert go.peer(keys.public).latest_handshake > 0

    down = ns.run("wg-quick", "down", str(conf), env=env, timeout=30, check=False)
    assert down.returncode == 0, down.stderr
    assert name not in ns.links()
    assert wait_until(lambda: not pid_alive(daemons[0]), 5), "pyralog-wg outlived wg-quick down"
    assert wait_until(lambda: not sock.exists(), 2), "the UAPI socket was left behind"


# -- daemon lifecycle ---------------------------------------------------------------------------


def _start_in_background(ns: Namespace, name: str) -> int:
    """``pyralog-wg NAME`` without -f: returns 0 once ready; the daemon's pid."""
    started = time.monotonic()
    result = ns.run(PYRALOG_WG, name, env=daemon_env(), timeout=20, check=False)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    # Ready means ready: the interface exists and the socket answers right now.
    assert name in ns.links()
    assert (UAPI_DIR / f"{name}.sock").exists()
    assert ns.run("wg", "show", name, "listen-port").stdout.strip().isdigit()
    [pid] = ns.pids()
    assert "pyralog-wg" in Path(f"/proc/{pid}/cmdline").read_text()
    return pid


def test_background_start_prints_nothing_without_log_level(lab: Lab) -> None:
    # As documented in pyralog-wg's --help text and module docstring: in the background,
    # logs are kept (on stderr) only when LOG_LEVEL is set. Unset: the caller sees nothing.
    ns = lab.namespace("s")
    name = lab.ifname("p")
    result = ns.run(PYRALOG_WG, name, env=daemon_env(), timeout=20, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


def _gone(ns: Namespace, name: str, pid: int) -> None:
    assert wait_until(lambda: not pid_alive(pid), 5), f"pyralog-wg {pid} is still running"
    assert not (UAPI_DIR / f"{name}.sock").exists(), "the UAPI socket was left behind"
    assert name not in ns.links()


def test_background_daemon_exits_when_its_link_is_deleted(lab: Lab) -> None:
    ns = lab.namespace("l")
    name = lab.ifname("p")
    pid = _start_in_background(ns, name)
    ns.ip("link", "del", name)
    _gone(ns, name, pid)


@pytest.mark.parametrize(
    ("mode", "sig"),
    [
        ("background", signal.SIGTERM),
        ("foreground", signal.SIGTERM),
        ("foreground", signal.SIGINT),
    ],
)
def test_signal_stops_the_daemon_and_cleans_up(lab: Lab, mode: str, sig: signal.Signals) -> None:
    ns = lab.namespace("t")
    if mode == "background":
        name = lab.ifname("p")
        pid = _start_in_background(ns, name)
        os.kill(pid, sig)
        _gone(ns, name, pid)
    else:
        wg = lab.wireguard(ns, "pyralog")
        assert wg.proc is not None
        wg.proc.send_signal(sig)
        assert wg.proc.wait(timeout=5) == 0
        _gone(ns, wg.ifname, wg.proc.pid)
        assert f"shutting down: {sig.name}" in wg.log_text()


def test_second_daemon_on_the_same_name_fails_cleanly(lab: Lab) -> None:
    ns = lab.namespace("d")
    first = lab.wireguard(ns, "pyralog")
    first.configure()
    other_ns = lab.namespace("e")
    attempts = [
        (ns, [PYRALOG_WG, "-f", first.ifname]),
        (ns, [PYRALOG_WG, first.ifname]),
        # Another namespace could create the TUN device, but the UAPI socket is shared.
        (other_ns, [PYRALOG_WG, "-f", first.ifname]),
    ]
    for where, argv in attempts:
        result = where.run(*argv, env=daemon_env(), timeout=20, check=False)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, (argv, result.stderr)
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("pyralog-wg: "), lines
        assert "in use" in lines[0] or "exists" in lines[0], lines
        assert first.ifname in lines[0], lines
    # The first daemon is untouched and still answers on its socket.
    assert first.alive()
    assert first.socket.exists()
    assert first.wg("show", first.ifname, "listen-port").strip() == str(first.port)
    assert other_ns.pids() == []
    assert first.ifname not in other_ns.links()


# -- rekey -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_rekey_after_120_seconds_without_losing_traffic(lab: Lab) -> None:
    p = make_pair(lab)
    # pyralog-wg initiates, so it is the one that must rekey when its session turns 120 s.
    assert p.ns_b.ping(p.a.ip4, count=1)
    first_go, first_ours = p.a.handshake_with(p.b), p.b.handshake_with(p.a)
    assert first_go > 0
    assert first_ours > 0
    count = 128
    sent, received = p.ns_b.ping_stats(p.a.ip4, count=count, interval=1.0)

    def rekeyed() -> bool:
        return p.a.handshake_with(p.b) > first_go and p.b.handshake_with(p.a) > first_ours

    assert wait_until(rekeyed, 5), (first_go, first_ours, p.a.dump(), p.b.dump())
    assert (sent, received) == (count, count), "echoes were lost around the rekey"
    second = p.b.handshake_with(p.a)
    assert 119 <= second - first_ours <= 130
    assert p.b.log_text().count("handshake completed (initiated by us)") == 2
    assert p.ns_a.ping(p.b.ip4, count=1)
