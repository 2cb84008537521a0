"""A member's health from the age of its latest WireGuard handshake with the coordinator.

WireGuard renews a session every 120 s while packets flow (REKEY_AFTER_TIME), and every
member long-polls the coordinator, so a live member's latest handshake is never much
older than that. Hence: under ``healthy_within`` (120 s) healthy; up to ``down_after``
(180 s: one rekey missed, plus the retry margin) degraded; older, down. A member that
never handshook is "pending" if it was added by hand and never seen ("provisioned"),
else down. The thresholds are configurable (``[health]`` in coordinator.toml) so that
tests need not wait three minutes; the defaults are the product document's.
"""

from __future__ import annotations

from dataclasses import dataclass

HEALTHY_WITHIN = 120.0
DOWN_AFTER = 180.0
STATES = ("healthy", "degraded", "down", "pending")


@dataclass(frozen=True)
class HealthThresholds:
    healthy_within: float = HEALTHY_WITHIN
    down_after: float = DOWN_AFTER

    def __post_init__(self) -> None:
        if not 0 < self.healthy_within <= self.down_after:
            raise ValueError(
                f"health thresholds: expected 0 < healthy_within ({self.healthy_within}) "
                f"<= down_after ({self.down_after})"
            )


def health(
    latest_handshake: float | None,
    state: str,
    now: float,
    thresholds: HealthThresholds = HealthThresholds(),
) -> str:
    """``healthy``, ``degraded``, ``down`` or ``pending`` (see the module's docstring)."""
    if not latest_handshake:
        return "pending" if state == "provisioned" else "down"
    age = now - latest_handshake
    if age < thresholds.healthy_within:
        return "healthy"
    if age <= thresholds.down_after:
        return "degraded"
    return "down"
