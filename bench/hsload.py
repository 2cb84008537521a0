"""Handshake load generator: how many handshakes per second does a responder complete?

Built from Pyralog's own sans-IO pieces (``handshake.create_initiation``, ``cookie.
CookieGenerator``, ``messages``, ``keys``, ``tai64n``), it plays many distinct initiators
against one responder (pyralog-wg or wireguard-go). Each identity is a peer configured on
the responder and sends from its own source address, because responders under load
allow each source IP 20 handshake messages a second (burst 5) and each peer one
initiation every 20 ms.

Two phases, so the generator spends as little CPU as possible while it measures (it
shares the machine with the responder):

``prepare``  computes every initiation up front (the Curve25519 work), in worker
             processes; TAI64N timestamps are the wall clock plus increasing offsets,
             so they increase per identity. Macs are left zero.
``run``      (inside the generator's network namespace) sends them closed-loop: each
             identity has at most one initiation in flight and sends the next one after
             the response (or a timeout), at most one per ``pace`` seconds. A cookie
             reply (type 3) is opened with ``CookieGenerator.consume_reply`` and the same
             initiation is sent again at once with mac2. All identities share one UDP
             socket; IP_PKTINFO picks each one's source address.

Responses (type 2, 92 bytes) count when their receiver index is the one in flight for
that identity and their mac1 (keyed by the identity's public key) verifies; the rate is
the number of them received in the measurement window divided by its length.

    python bench/hsload.py run --pool POOL --target 172.29.100.1:51820 \
        --first-source 172.29.128.1 --warmup 1 --duration 4
"""

from __future__ import annotations

import argparse
import heapq
import ipaddress
import json
import math
import multiprocessing
import os
import pickle
import resource
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

from stats import percentile

from pyralog.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    LABEL_MAC1,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_RESPONSE,
    RESPONSE_SIZE,
)
from pyralog.wireguard.cookie import CookieGenerator
from pyralog.wireguard.crypto import hash_, mac
from pyralog.wireguard.handshake import Handshake, create_initiation
from pyralog.wireguard.keys import PrivateKey, key_to_base64
from pyralog.wireguard.tai64n import tai64n

DEFAULT_PACE = 0.052  # seconds between one identity's initiations: under 20/s per source IP
DEFAULT_TIMEOUT = 1.0
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux; in the socket module from 3.13
_U32 = struct.Struct("<I")
_RESPONSE_MAC1_END = RESPONSE_SIZE - 16
_RESPONSE_MAC1_START = RESPONSE_SIZE - 32


@dataclass
class Pool:
    """Precomputed initiations: ``bodies[i]`` for identity ``i``, in send order."""

    responder_private: bytes
    identities: list[bytes]  # raw private keys
    bodies: list[list[bytes]]

    @property
    def responder_public(self) -> bytes:
        return PrivateKey(self.responder_private).public_key.raw

    def public_keys(self) -> list[bytes]:
        return [PrivateKey(raw).public_key.raw for raw in self.identities]

    def responder_config(self, listen_port: int) -> str:
        """A ``wg setconf`` file: the responder's key and every identity as a peer."""
        lines = [
            "[Interface]",
            f"PrivateKey = {key_to_base64(self.responder_private)}",
            f"ListenPort = {listen_port}",
        ]
        for pub in self.public_keys():
            lines += ["", "[Peer]", f"PublicKey = {key_to_base64(pub)}"]
        return "\n".join(lines) + "\n"

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            pickle.dump((self.responder_private, self.identities, self.bodies), f)

    @classmethod
    def load(cls, path: str) -> Pool:
        with open(path, "rb") as f:
            return cls(*pickle.load(f))


def _make_bodies(job: tuple[bytes, bytes, list[int], float, float]) -> list[bytes]:
    identity_raw, responder_public, indices, wall0, step = job
    identity = PrivateKey(identity_raw)
    hs = Handshake(responder_public)
    hs.set_static_static(identity)
    return [
        create_initiation(identity, hs, index, tai64n(wall0 + k * step)).pack()
        for k, index in enumerate(indices)
    ]


def _worker_signals() -> None:
    """Workers die quietly when the pool ends them; Ctrl-C is the parent's business."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def prepare(identities: int, per_identity: int, *, processes: int = 0, step: float = 0.05) -> Pool:
    """``identities`` x ``per_identity`` initiations to a new responder key."""
    responder = PrivateKey.generate()
    ids = [PrivateKey.generate().raw for _ in range(identities)]
    rng = os.urandom
    seen: set[int] = {0}
    indices: list[list[int]] = []
    for _ in ids:
        row = []
        while len(row) < per_identity:
            index = _U32.unpack(rng(4))[0]
            if index not in seen:
                seen.add(index)
                row.append(index)
        indices.append(row)
    # Timestamps: the wall clock now, then +step per initiation (>16 ms, the TAI64N grain).
    wall0 = time.time()
    jobs = [
        (raw, responder.public_key.raw, idx, wall0, step)
        for raw, idx in zip(ids, indices, strict=True)
    ]
    processes = processes or os.cpu_count() or 1
    if processes > 1:
        workers = multiprocessing.get_context("fork").Pool(processes, _worker_signals)
        try:
            bodies = workers.map(_make_bodies, jobs, chunksize=max(1, len(jobs) // 32))
            workers.close()
        finally:
            workers.terminate()
            workers.join()
    else:
        bodies = [_make_bodies(job) for job in jobs]
    return Pool(responder.raw, ids, bodies)


def run_load(
    pool: Pool,
    target: tuple[str, int],
    sources: list[str],
    *,
    warmup: float,
    duration: float,
    pace: float = DEFAULT_PACE,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict:
    n = len(pool.identities)
    assert len(sources) >= n, "one source address per identity"
    responder_public = pool.responder_public
    gens = [CookieGenerator(responder_public) for _ in range(n)]
    mac1_keys = [hash_(LABEL_MAC1, pub) for pub in pool.public_keys()]
    controls = [
        [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, socket.inet_aton(s), bytes(4)))]
        for s in sources[:n]
    ]
    owner = {}
    for i, bodies in enumerate(pool.bodies):
        for body in bodies:
            owner[_U32.unpack_from(body, 4)[0]] = i

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind(("0.0.0.0", 0))
    sock.setblocking(False)
    sendmsg, recv = sock.sendmsg, sock.recv

    pos = [0] * n
    in_flight = [0] * n  # sender index awaited, 0 when none
    in_flight_body: list[bytes | None] = [None] * n
    sent_at = [0.0] * n
    last_new = [-math.inf] * n
    stats = dict.fromkeys(
        (
            "sent",
            "resent_with_mac2",
            "responses",
            "cookie_replies",
            "bad_cookie_replies",
            "timeouts",
            "stale",
            "bad_mac1",
            "exhausted",
            "send_errors",
            "other",
        ),
        0,
    )
    in_window = 0
    latencies: list[float] = []

    t0 = time.monotonic()
    t_start = t0 + warmup
    t_end = t_start + duration
    SEND, CHECK = 0, 1
    heap: list[tuple[float, int, int, int]] = [(t0 + pace * i / n, SEND, i, 0) for i in range(n)]
    heapq.heapify(heap)

    def transmit(i: int, body: bytes, now: float) -> bool:
        try:
            sendmsg([gens[i].add_macs(body, now)], controls[i], 0, target)
        except (BlockingIOError, InterruptedError):
            stats["send_errors"] += 1
            return False
        sent_at[i] = now
        return True

    def send_new(i: int, now: float) -> None:
        if in_flight[i]:
            return
        bodies = pool.bodies[i]
        if pos[i] >= len(bodies):
            stats["exhausted"] += 1
            return
        body = bodies[pos[i]]
        pos[i] += 1
        last_new[i] = now
        index = _U32.unpack_from(body, 4)[0]
        in_flight[i] = index
        in_flight_body[i] = body
        transmit(i, body, now)
        stats["sent"] += 1
        heapq.heappush(heap, (now + timeout, CHECK, i, index))

    def next_send(i: int, now: float) -> None:
        heapq.heappush(heap, (max(now, last_new[i] + pace), SEND, i, 0))

    while True:
        now = time.monotonic()
        if now >= t_end:
            break
        while heap and heap[0][0] <= now:
            _, kind, i, index = heapq.heappop(heap)
            if kind == SEND:
                send_new(i, now)
            elif in_flight[i] == index:
                if now - sent_at[i] >= timeout:
                    stats["timeouts"] += 1
                    in_flight[i] = 0
                    next_send(i, now)
                else:
                    heapq.heappush(heap, (sent_at[i] + timeout, CHECK, i, index))
        wait = min(0.005, max(0.0, heap[0][0] - now)) if heap else 0.005
        if not select.select([sock], [], [], wait)[0]:
            continue
        for _ in range(4096):
            try:
                data = recv(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                stats["other"] += 1
                continue
            now = time.monotonic()
            size = len(data)
            kind = data[0] if size else 0
            if kind == MESSAGE_RESPONSE and size == RESPONSE_SIZE:
                receiver = _U32.unpack_from(data, 8)[0]
                i = owner.get(receiver)
                if i is None or in_flight[i] != receiver:
                    stats["stale"] += 1
                    continue
                expected = mac(mac1_keys[i], data[:_RESPONSE_MAC1_START])
                if expected != data[_RESPONSE_MAC1_START:_RESPONSE_MAC1_END]:
                    stats["bad_mac1"] += 1
                    continue
                stats["responses"] += 1
                in_flight[i] = 0
                if t_start <= now < t_end:
                    in_window += 1
                    latencies.append(now - sent_at[i])
                next_send(i, now)
            elif kind == MESSAGE_COOKIE_REPLY and size == COOKIE_REPLY_SIZE:
                receiver = _U32.unpack_from(data, 4)[0]
                i = owner.get(receiver)
                if i is None or in_flight[i] != receiver:
                    stats["stale"] += 1
                    continue
                stats["cookie_replies"] += 1
                if gens[i].consume_reply(data[8:32], data[32:64], now):
                    body = in_flight_body[i]
                    assert body is not None
                    if transmit(i, body, now):
                        stats["resent_with_mac2"] += 1
                else:
                    stats["bad_cookie_replies"] += 1
            else:
                stats["other"] += 1
    sock.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "generator_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
        "handshakes_per_second": in_window / duration,
        "completed_in_window": in_window,
        "window_seconds": duration,
        "warmup_seconds": warmup,
        "identities": n,
        "pace_seconds": pace,
        "offered_ceiling_per_second": n / pace,
        "latency_p50_ms": _ms(percentile(latencies, 50)),
        "latency_p99_ms": _ms(percentile(latencies, 99)),
        **stats,
    }


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 3)


def sources_from(first: str, count: int) -> list[str]:
    base = ipaddress.IPv4Address(first)
    return [str(base + i) for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="send a prepared pool (run inside the generator netns)")
    r.add_argument("--pool", required=True)
    r.add_argument("--target", required=True, help="responder IP:PORT")
    r.add_argument("--first-source", required=True, help="source address of identity 0")
    r.add_argument("--warmup", type=float, default=1.0)
    r.add_argument("--duration", type=float, default=4.0)
    r.add_argument("--pace", type=float, default=DEFAULT_PACE)
    r.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = p.parse_args(argv)
    pool = Pool.load(args.pool)
    host, port = args.target.rsplit(":", 1)
    result = run_load(
        pool,
        (host, int(port)),
        sources_from(args.first_source, len(pool.identities)),
        warmup=args.warmup,
        duration=args.duration,
        pace=args.pace,
        timeout=args.timeout,
    )
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
