"""Resident memory (VmRSS) of an idle daemon with 1, 100 and 10,000 peers, for bench/run.py.

Per implementation, one daemon in a namespace of its own: RSS with no peers, then after
``wg setconf`` to the first count and ``wg addconf`` up to each next one (timed), and at
the end the time ``wg show IF peers`` takes to read them all back.
"""

from __future__ import annotations

import os
import subprocess
import time

from harness import PORT, Settings, Skip, attempt, log
from lab import LONG_NAMES, Daemon, Lab, run
from stats import median

MEMORY_PEERS = (1, 100, 10_000)
SHOW_TIMEOUT = 20  # seconds to wait for `wg show IF peers` with 10,000 peers


def random_public_keys(n: int) -> list[str]:
    """``n`` random 32-byte Curve25519 public keys that are not low-order points."""
    from pyralog.wireguard.keys import is_low_order, key_to_base64

    keys: list[str] = []
    seen: set[bytes] = set()
    while len(keys) < n:
        raw = os.urandom(32)
        if raw in seen or is_low_order(raw):
            continue
        seen.add(raw)
        keys.append(key_to_base64(raw))
    return keys


def peer_conf(keys: list[str], start: int) -> str:
    """[Peer] sections, each with its own /32 from 10.29.0.0/16 (index ``start`` on)."""
    out = []
    for i, key in enumerate(keys, start=start):
        out.append(f"[Peer]\nPublicKey = {key}\nAllowedIPs = 10.29.{i >> 8}.{i & 255}/32\n")
    return "\n".join(out)


def measure(s: Settings, results: dict, errors: list[str]) -> None:
    """RSS per peer count for each implementation, the same peers for both: results["memory"]."""
    keys = random_public_keys(MEMORY_PEERS[-1])
    out: dict = {"peer_counts": list(MEMORY_PEERS)}
    for impl in ("go", "py"):
        log(f"memory, {LONG_NAMES[impl]}: {', '.join(map(str, MEMORY_PEERS))} peers")
        res = attempt(errors, f"memory {LONG_NAMES[impl]}", _memory_one, s, keys, impl)
        if res is not None:
            out[impl] = res
            log(
                f"  RSS {', '.join(f'{v / 2**20:.1f}' for v in res['rss_bytes'].values())} MiB;"
                f" {res['bytes_per_peer']:,.0f} bytes/peer"
            )
    results["memory"] = out


def _settled_rss(d: Daemon, settle: float) -> int:
    time.sleep(settle)
    samples = []
    for _ in range(5):
        samples.append(d.rss())
        time.sleep(0.1)
    rss = median(samples)
    assert rss is not None  # five samples
    return int(rss)


def _memory_one(s: Settings, keys: list[str], impl: str) -> dict:
    with Lab() as lab:
        ns = lab.netns(f"mem{impl}")
        d = lab.daemon(ns, impl, "mem")
        rss: dict[str, int] = {"0": _settled_rss(d, s.settle)}
        apply_seconds: dict[str, float] = {}
        private = lab.genkey()[0]
        done = 0
        for count in MEMORY_PEERS:
            batch = keys[done:count]
            if done == 0:
                text = f"[Interface]\nPrivateKey = {private}\nListenPort = {PORT}\n\n"
                text += peer_conf(batch, done)
                verb = "setconf"
            else:
                text = peer_conf(batch, done)
                verb = "addconf"
            conf = lab.write(f"peers-{count}.conf", text)
            t = time.monotonic()
            d.wg(verb, d.ifname, str(conf), timeout=600)
            apply_seconds[str(count)] = time.monotonic() - t
            if done == 0:
                run(["ip", "-n", ns, "link", "set", d.ifname, "up"])
            done = count
            if not d.alive():
                raise Skip(f"{LONG_NAMES[impl]} exited after {count} peers: {d.log_tail(5)}")
            rss[str(count)] = _settled_rss(d, s.settle)
        # Last (it may allocate and so change RSS): read the configuration back, timed.
        # A daemon that has not answered in SHOW_TIMEOUT seconds is noted, not waited for.
        show_seconds: float | None = None
        configured: int | None = None
        t = time.monotonic()
        try:
            dump = d.wg("show", d.ifname, "peers", timeout=SHOW_TIMEOUT)
            show_seconds = time.monotonic() - t
            configured = len(dump.split())
        except subprocess.TimeoutExpired:
            pass
        if configured is not None and configured != MEMORY_PEERS[-1]:
            raise Skip(f"{LONG_NAMES[impl]} reports {configured} peers, not {MEMORY_PEERS[-1]}")
        lo, hi = str(MEMORY_PEERS[0]), str(MEMORY_PEERS[-1])
        return {
            "rss_bytes": rss,
            "apply_seconds": apply_seconds,
            "bytes_per_peer": (rss[hi] - rss[lo]) / (MEMORY_PEERS[-1] - MEMORY_PEERS[0]),
            "show_seconds": show_seconds,
            "show_timeout_seconds": SHOW_TIMEOUT,
            "peers_reported": configured,
        }
