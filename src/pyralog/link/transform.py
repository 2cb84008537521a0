"""Datagram transforms: reversible, sans-IO rewrites between the Device and the socket.

A transform sits on the link's pipeline (``Pipeline``), configured alike on both peers,
and leaves the WireGuard core untouched: obfuscation, padding, junk and decoy datagrams
(``pyralog.stealth``) are transforms. Each one may

- rewrite the outbound batch (``outbound``: a list of ``(bytes, endpoint)`` in, a list
  out, in order; it may add, drop, split or resize datagrams);
- rewrite or swallow one inbound datagram (``inbound``: a datagram in, a datagram or
  None out; it may change the endpoint, e.g. to fold hopping ports into one peer);
- originate datagrams of its own (``take_output``: decoys, junk, answers), which then
  pass through the transforms after it;
- keep timers (``next_deadline``/``tick``), driven by the link with the Device's.

Order: ``transforms[0]`` is nearest the Device. Outbound batches go through them first to
last, inbound datagrams last to first, so a stack of transforms unwraps in reverse.

GSO: the socket coalesces runs of equal-sized datagrams to one endpoint into a single
syscall (only the last of a run may be shorter). A transform that changes sizes should
keep equal sizes equal (a fixed overhead does) or pad to a few size buckets; arbitrary
sizes still work, one syscall per datagram.

The base class is the identity: subclasses override only what they change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pyralog.wireguard.endpoint import Endpoint

Datagram = tuple[bytes, Endpoint]


class Transform:
    """The identity transform; the interface every transform implements."""

    name = "identity"

    def outbound(self, datagrams: list[Datagram], now: float) -> list[Datagram]:
        return datagrams

    def inbound(self, data: bytes, endpoint: Endpoint, now: float) -> Datagram | None:
        return data, endpoint

    def take_output(self) -> list[Datagram]:
        """Datagrams this transform originated since the last call."""
        return []

    def next_deadline(self) -> float | None:
        return None

    def tick(self, now: float) -> None:
        """Time passed; called at ``next_deadline()`` or later."""


def _overrides(transform: Transform, method: str) -> bool:
    return getattr(type(transform), method) is not getattr(Transform, method)


class Pipeline:
    """An ordered stack of transforms, applied as one; fixed once made.

    Each direction only runs the transforms that override its method: a transform that
    leaves ``inbound`` as the identity costs nothing on the inbound path (and the link
    skips a direction no transform touches), so the seam itself is free."""

    def __init__(self, transforms: Iterable[Transform] = ()) -> None:
        self.transforms: tuple[Transform, ...] = tuple(transforms)
        ts = self.transforms
        self._outbound = tuple(t for t in ts if _overrides(t, "outbound"))
        self._inbound = tuple(t for t in reversed(ts) if _overrides(t, "inbound"))
        # (transform, the outbound stages after it) for those that originate datagrams
        self._origins = tuple(
            (t, tuple(u for u in ts[i + 1 :] if _overrides(u, "outbound")))
            for i, t in enumerate(ts)
            if _overrides(t, "take_output")
        )
        self._timed = tuple(
            t for t in ts if _overrides(t, "next_deadline") or _overrides(t, "tick")
        )
        self.rewrites_outbound = bool(self._outbound or self._origins)
        self.rewrites_inbound = bool(self._inbound)
        self.has_timers = bool(self._timed)

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def outbound(self, datagrams: list[Datagram], now: float) -> list[Datagram]:
        for transform in self._outbound:
            datagrams = transform.outbound(datagrams, now)
        if self._origins:
            datagrams = datagrams + self.originated(now)
        return datagrams

    def inbound(self, data: bytes, endpoint: Endpoint, now: float) -> Datagram | None:
        result: Datagram | None = (data, endpoint)
        for transform in self._inbound:
            result = transform.inbound(result[0], result[1], now)
            if result is None:
                return None
        return result

    def originated(self, now: float) -> list[Datagram]:
        """Every transform's own datagrams, each passed through the transforms after it."""
        out: list[Datagram] = []
        for transform, later in self._origins:
            own = transform.take_output()
            for stage in later:
                if not own:
                    break
                own = stage.outbound(own, now)
            out.extend(own)
        return out

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (t.next_deadline() for t in self._timed) if d is not None]
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> None:
        for transform in self._timed:
            deadline = transform.next_deadline()
            if deadline is not None and deadline <= now:
                transform.tick(now)


# Transforms a runtime can be told to load by name (PYRALOG_TRANSFORMS=name,name; the
# stealth layer adds its own, configured from wireguard.toml).
REGISTRY: dict[str, Callable[[], Transform]] = {"identity": Transform}


def from_names(spec: str) -> list[Transform]:
    """``"identity,identity"`` -> transforms, nearest the Device first."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown datagram transform {unknown[0]!r} (known: {known})")
    return [REGISTRY[n]() for n in names]
