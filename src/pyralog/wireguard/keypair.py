"""Transport keypairs and the current / previous / next rotation (whitepaper 5.4.6, 6.1).

A keypair is what a completed handshake leaves behind: one AEAD per direction, the send
counter and the receive replay window. Each peer keeps up to three:

- ``current`` encrypts everything we send;
- ``previous`` still decrypts stragglers from the last session;
- ``next`` exists only on the responder, between sending a response and receiving the
  initiator's first data packet under the new keys. Until then the initiator may not
  have the keys, so the responder must not send with them.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pyralog.wireguard.replay import ReplayWindow


class Keypair:
    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "peer",
        "receiver",
        "remote_index",
        "replay",
        "send_counter",
        "sender",
    )

    def __init__(
        self,
        send_key: bytes,
        receive_key: bytes,
        is_initiator: bool,
        local_index: int,
        remote_index: int,
        created: float,
        peer: object,
    ) -> None:
        # One AEAD object per direction, built once: it is the per-packet work horse.
        self.sender = ChaCha20Poly1305(send_key)
        self.receiver = ChaCha20Poly1305(receive_key)
        self.is_initiator = is_initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.created = created
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.peer = peer

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return f"<Keypair {role} local={self.local_index:#010x} sent={self.send_counter}>"


class Keypairs:
    """The three slots. Methods return keypairs they drop, so the caller frees their indices."""

    __slots__ = ("current", "next", "previous")

    def __init__(self) -> None:
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None

    def install_initiator(self, kp: Keypair) -> list[Keypair]:
        """The initiator uses a new session at once: it knows the responder has the keys."""
        dropped = [k for k in (self.previous,) if k is not None]
        if self.next is not None:
            # An unconfirmed responder session loses to our own; keep it to decrypt late data.
            self.previous = self.next
            self.next = None
            if self.current is not None:
                dropped.append(self.current)
        else:
            self.previous = self.current
        self.current = kp
        return dropped

    def install_responder(self, kp: Keypair) -> list[Keypair]:
        """The responder parks a new session in ``next`` until the initiator confirms it."""
        dropped = [k for k in (self.next, self.previous) if k is not None]
        self.next = kp
        self.previous = None
        return dropped

    def confirm(self, kp: Keypair) -> list[Keypair] | None:
        """Data arrived under ``kp``: if it is ``next``, rotate it in and return what fell out."""
        if kp is not self.next:
            return None
        dropped = [self.previous] if self.previous is not None else []
        self.previous = self.current
        self.current = kp
        self.next = None
        return dropped

    def clear(self) -> list[Keypair]:
        dropped = [k for k in (self.current, self.previous, self.next) if k is not None]
        self.current = self.previous = self.next = None
        return dropped

    def __iter__(self):
        for k in (self.current, self.previous, self.next):
            if k is not None:
                yield k
