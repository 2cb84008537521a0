"""Enrolling with a join token, over WireGuard, before the node's own backend exists.

The node brings up a short-lived embedded tunnel with its own key and its provisional
address (``enrollment.provisional_address``), peers it with the coordinator from the
token (the token's preshared key, and the token's handshake proof in mac2), and calls
``POST /v1/enroll`` through it. A coordinator that does not accept the token never
answers, so the only failure signal is a timeout; the error says what it can mean.
The endpoints in the token are tried in turn.

The node's backend then handshakes with the coordinator again, with the same key. The
coordinator takes at most ``INITIATIONS_PER_SECOND`` initiations from one key and none
whose TAI64N timestamp (16.8 ms resolution) is not later than the last one's; a second
initiation sooner is dropped without an answer and retried only after ``REKEY_TIMEOUT``
(5 s). So ``enroll`` returns ``NEXT_HANDSHAKE_AFTER`` after the welcome, never sooner.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

from pyralog.link.control import PeerChange, SetRequest
from pyralog.mesh import http
from pyralog.mesh.enrollment import PROVISIONAL_NETWORK, provisional_address
from pyralog.mesh.token import JoinToken, enrollment_psk, proof_key
from pyralog.netstack.embedded import EmbeddedTunnel
from pyralog.wireguard.config import Config, InterfaceConfig
from pyralog.wireguard.constants import INITIATIONS_PER_SECOND
from pyralog.wireguard.endpoint import canonical
from pyralog.wireguard.keys import PrivateKey
from pyralog.wireguard.tai64n import RESOLUTION

ENROLL_TIMEOUT = 12.0  # per endpoint: two WireGuard handshake attempts and the request
# Between the enrollment's handshake (before the welcome) and the backend's first one.
NEXT_HANDSHAKE_AFTER = max(1.0 / INITIATIONS_PER_SECOND, RESOLUTION) + 0.005


class EnrollmentError(Exception):
    """Enrollment failed; the message says why (and, for silence, what it can mean)."""


async def _resolve(host: str, port: int) -> tuple[str, int]:
    try:
        return canonical(str(ipaddress.ip_address(host)), port)
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as e:
        raise EnrollmentError(f"coordinator endpoint {host}:{port}: cannot resolve: {e}") from None
    return canonical(infos[0][4][0], infos[0][4][1])


async def enroll(
    key: PrivateKey,
    token: JoinToken,
    node_id: str,
    listen_port: int,
    *,
    endpoints: tuple[tuple[str, int], ...] = (),
    timeout: float = ENROLL_TIMEOUT,
) -> dict[str, Any]:
    """The coordinator's welcome (``CoordinatorService.welcome``) once registered.
    ``endpoints`` (e.g. ``[bootstrap] coordinator_endpoint``) override the token's."""
    address = provisional_address(key.public_key)
    config = Config(
        InterfaceConfig(
            key, addresses=[ipaddress.ip_interface(f"{address}/{PROVISIONAL_NETWORK.prefixlen}")]
        ),
        [],
        path="enrollment",
    )
    coordinator = str(token.coordinator_address)
    failures = []
    for host, port in endpoints or token.endpoints:
        endpoint = await _resolve(host, port)
        tunnel = await EmbeddedTunnel.start(config)
        try:
            tunnel.apply(
                SetRequest(
                    peers=[
                        PeerChange(
                            token.coordinator_key,
                            preshared_key=enrollment_psk(token.secret),
                            endpoint=endpoint,
                            allowed_ips=[
                                f"{coordinator}/{token.coordinator_address.max_prefixlen}"
                            ],
                        )
                    ]
                )
            )
            tunnel.device.set_handshake_proof(token.coordinator_key, proof_key(token.secret))
            welcome = await http.call(
                lambda t=tunnel: t.open_connection(coordinator, token.api_port),
                "POST",
                "/v1/enroll",
                {"node_id": node_id, "listen_port": listen_port},
                timeout=timeout,
            )
            await asyncio.sleep(NEXT_HANDSHAKE_AFTER)  # see the module's docstring
            return welcome
        except http.HttpError as e:
            if e.status:
                raise EnrollmentError(f"the coordinator refused: {e.message}") from None
            failures.append(f"{host}:{port}")
        finally:
            await tunnel.close()
    raise EnrollmentError(
        f"no answer from the coordinator at {', '.join(failures)} within {timeout:g} s. "
        "A coordinator stays silent to unknown keys: the token may be wrong, expired, "
        "revoked or already used, or the coordinator is down or unreachable (see its "
        "audit log)"
    )
