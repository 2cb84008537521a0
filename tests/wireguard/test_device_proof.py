"""Handshake proofs in mac2: the initiator side, and the responder's check under load."""

from __future__ import annotations

from test_device_seams import lone_pair

from pyralog.wireguard.admission import Admission, UnknownInitiator
from pyralog.wireguard.constants import MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION, MESSAGE_RESPONSE
from pyralog.wireguard.keys import PresharedKey
from pyralog.wireguard.proof import check_proof

from wgsim import A_IP, B_IP, ipv4_packet

PROOF = bytes(range(32))
OTHER = bytes(32)


def proof_policy(key: bytes, psk: PresharedKey):
    def policy(who: UnknownInitiator) -> Admission | None:
        if not check_proof(key, who.message, who.cookie):
            return None
        return Admission(preshared_key=psk, allowed_ips=[f"{A_IP}/32"])

    return policy


def test_initiations_carry_the_proof_and_a_matching_policy_admits() -> None:
    psk = PresharedKey(bytes([9]) * 32)
    net, a, b, _seen = lone_pair(None, psk)
    b.unknown_initiator_policy = proof_policy(PROOF, psk)
    a.set_handshake_proof(b.public_key, PROOF)  # type: ignore[arg-type]
    a.send_packet(ipv4_packet(A_IP, B_IP, b"hi"), 0.0)
    net.pump()
    assert [s.kind for s in net.log][:2] == [MESSAGE_INITIATION, MESSAGE_RESPONSE]
    assert b.get_peer(a.public_key) is not None  # type: ignore[arg-type]


def test_a_wrong_proof_gets_silence() -> None:
    psk = PresharedKey(bytes([9]) * 32)
    net, a, b, _ = lone_pair(None, psk)
    b.unknown_initiator_policy = proof_policy(PROOF, psk)
    a.set_handshake_proof(b.public_key, OTHER)  # type: ignore[arg-type]
    a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    net.pump()
    assert [s.kind for s in net.log] == [MESSAGE_INITIATION]
    assert b.peers == [] and b.drops["unknown_peer"] == 1


def test_without_a_proof_mac2_stays_zero() -> None:
    net, a, _b, seen = lone_pair(None)
    a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    net.pump()
    assert seen[0].message[-16:] == bytes(16)


def test_under_load_the_proof_is_combined_with_the_cookie() -> None:
    psk = PresharedKey(bytes([9]) * 32)
    net, a, b, _seen = lone_pair(None, psk)
    checks: list[bool] = []

    def pre_dh(message: bytes, cookie: bytes | None) -> bool:
        checks.append(check_proof(PROOF, message, cookie))
        return checks[-1]

    b.mac2_proof_check = pre_dh
    b.unknown_initiator_policy = proof_policy(PROOF, psk)
    b.force_under_load = True
    a.set_handshake_proof(b.public_key, PROOF)  # type: ignore[arg-type]
    a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    net.pump()
    # First the cookie reply (nobody has a cookie yet: no Curve25519 work was done) ...
    assert [s.kind for s in net.log] == [MESSAGE_INITIATION, MESSAGE_COOKIE_REPLY]
    assert b.drops["cookie_sent"] == 1 and checks == []
    # ... then the retry proves both the cookie and the token, and is answered.
    a.rekey(b.public_key, 6.0)  # type: ignore[arg-type]
    net.pump()
    assert [s.kind for s in net.log][2:4] == [MESSAGE_INITIATION, MESSAGE_RESPONSE]
    assert checks == [True]
    assert b.get_peer(a.public_key) is not None  # type: ignore[arg-type]


def test_under_load_a_wrong_proof_gets_only_cookie_replies() -> None:
    psk = PresharedKey(bytes([9]) * 32)
    net, a, b, _ = lone_pair(None, psk)
    b.mac2_proof_check = lambda message, cookie: check_proof(PROOF, message, cookie)
    b.unknown_initiator_policy = proof_policy(PROOF, psk)
    b.force_under_load = True
    a.set_handshake_proof(b.public_key, OTHER)  # type: ignore[arg-type]
    a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    net.pump()
    a.rekey(b.public_key, 6.0)  # type: ignore[arg-type]
    net.pump()
    assert MESSAGE_RESPONSE not in [s.kind for s in net.log]
    assert b.peers == [] and b.drops["cookie_sent"] == 2


def test_a_provisional_peer_must_convince_the_policy_on_every_initiation() -> None:
    first, second = PresharedKey(bytes([1]) * 32), PresharedKey(bytes([2]) * 32)
    answers: list[Admission | None] = [
        Admission(preshared_key=first, allowed_ips=[f"{A_IP}/32"]),
        None,  # e.g. the token was revoked meanwhile
        Admission(preshared_key=second, allowed_ips=[f"{A_IP}/32"]),
    ]
    net, a, b, seen = lone_pair(None, first)
    b.unknown_initiator_policy = lambda who: (seen.append(who), answers.pop(0))[1]
    a.send_packet(ipv4_packet(A_IP, B_IP), 0.0)
    net.pump()
    assert b.get_peer(a.public_key).provisional  # type: ignore[arg-type, union-attr]
    a.rekey(b.public_key, 10.0)  # type: ignore[arg-type]
    net.now = 10.0
    net.pump()
    assert len(seen) == 2 and MESSAGE_RESPONSE not in [s.kind for s in net.log[2:]]
    a.set_preshared_key(b.public_key, second, 20.0)  # type: ignore[arg-type]
    a.rekey(b.public_key, 20.0)  # type: ignore[arg-type]
    net.now = 20.0
    net.pump()
    assert len(seen) == 3
    assert b.get_peer(a.public_key).preshared_key == second  # type: ignore[arg-type, union-attr]
