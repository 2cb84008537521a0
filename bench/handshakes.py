"""Handshakes per second a responder completes, for bench/run.py (around bench/hsload.py).

The initiations are computed once, up front, for both implementations. Then per
implementation: a responder namespace with the daemon (every identity configured as a
peer) and a generator namespace holding one source address per identity, joined by a
veth link; ``hsload.py run`` floods from the generator namespace while the responder's
CPU time is measured.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import hsload
from harness import PORT, Settings, Skip, attempt, log
from lab import LONG_NAMES, Lab, run

HSLOAD = Path(__file__).resolve().parent / "hsload.py"


def measure(s: Settings, results: dict, errors: list[str]) -> None:
    """One initiation pool, then a flood against each implementation: results["handshake"]."""
    per_identity = math.ceil((s.hs_warmup + s.hs_seconds) / hsload.DEFAULT_PACE) + 8
    log(f"preparing {s.hs_identities} x {per_identity} handshake initiations")
    t = time.monotonic()
    pool = hsload.prepare(s.hs_identities, per_identity)
    prepare_seconds = time.monotonic() - t
    out: dict = {
        "identities": s.hs_identities,
        "initiations_prepared": s.hs_identities * per_identity,
        "prepare_seconds": prepare_seconds,
    }
    for impl in ("go", "py"):
        log(f"handshakes/s, responder {LONG_NAMES[impl]}")
        res = attempt(errors, f"handshakes {LONG_NAMES[impl]}", _handshake_one, s, pool, impl)
        if res is not None:
            out[impl] = res
            log(
                f"  {res['handshakes_per_second']:,.0f} handshakes/s "
                f"({res['responder_cpu_us_per_handshake'] or 0:,.0f} us CPU each)"
            )
    results["handshake"] = out


def _handshake_one(s: Settings, pool: hsload.Pool, impl: str) -> dict:
    with Lab() as lab:
        r = lab.netns(f"hs{impl}-r")
        g = lab.netns(f"hs{impl}-g")
        r_if, g_if = lab.if_name("xhr"), lab.if_name("xhg")
        lab.veth(r, r_if, "172.29.100.1/24", g, g_if, "172.29.100.2/24")
        # The identities' addresses: /32s on the generator's veth, routed on the responder
        # side through the generator (one neighbour entry instead of hundreds).
        first = "172.29.128.1"
        sources = hsload.sources_from(first, len(pool.identities))
        batch = lab.write("addrs", "".join(f"address add {a}/32 dev {g_if}\n" for a in sources))
        run(["ip", "-n", g, "-batch", str(batch)])
        run(["ip", "-n", r, "route", "add", "172.29.128.0/17", "via", "172.29.100.2"])
        d = lab.daemon(r, impl, "hsr")
        conf = lab.write("responder.conf", pool.responder_config(PORT))
        d.wg("setconf", d.ifname, str(conf))
        run(["ip", "-n", r, "link", "set", d.ifname, "up"])
        pool_file = lab.tmp / "pool.pickle"
        pool.save(str(pool_file))
        time.sleep(0.5)
        cpu0 = d.cpu()
        seconds = s.hs_warmup + s.hs_seconds
        out = run(
            [
                "ip",
                "netns",
                "exec",
                g,
                sys.executable,
                str(HSLOAD),
                "run",
                "--pool",
                str(pool_file),
                "--target",
                f"172.29.100.1:{PORT}",
                "--first-source",
                first,
                "--warmup",
                str(s.hs_warmup),
                "--duration",
                str(s.hs_seconds),
            ],
            timeout=seconds + 60,
        )
        cpu = d.cpu() - cpu0
        if not d.alive():
            raise Skip(f"{LONG_NAMES[impl]} exited during the handshake flood: {d.log_tail(5)}")
        res = json.loads(out)
        res["responder_cpu_seconds"] = cpu
        res["responder_cpu_us_per_handshake"] = (
            cpu / res["responses"] * 1e6 if res["responses"] else None
        )
        res["responder_rss_bytes_after"] = d.rss()
        return res
