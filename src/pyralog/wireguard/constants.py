"""Protocol constants from the WireGuard whitepaper (section 6.1) and wire format.

Times are in seconds, matching the ``now`` values every entry point of the core takes.
"""

from __future__ import annotations

# Noise construction and WireGuard identifiers (whitepaper 5.4).
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

# Message types (first byte; the three following bytes are reserved zeros).
MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
AEAD_TAG_SIZE = 16
TRANSPORT_MIN_SIZE = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE  # a keepalive

KEY_SIZE = 32
MAC_SIZE = 16
COOKIE_SIZE = 16
COOKIE_NONCE_SIZE = 24
TIMESTAMP_SIZE = 12

# Timer and counter limits (whitepaper 6.1).
REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 10.0

# Derived rules the reference implementations share.
REKEY_TIMEOUT_JITTER_MAX = 1.0 / 3.0
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18 attempts, then give up
ZERO_KEY_MATERIAL_AFTER = REJECT_AFTER_TIME * 3
# The initiator of a session rekeys on receive when its keypair gets this old, so a fresh
# session exists before the old one is rejected.
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
COOKIE_SECRET_MAX_AGE = 120.0
COOKIE_VALIDITY = COOKIE_SECRET_MAX_AGE - 5.0  # latency allowance, as wireguard-go
# An initiator may not be answered more often than this (flood protection, per peer).
INITIATIONS_PER_SECOND = 50
MAX_STAGED_PACKETS = 128

# Replay window: kernel-style ring of 64-bit words.
REPLAY_WORD_BITS = 64
REPLAY_WORDS = 128
REPLAY_WINDOW_SIZE = (REPLAY_WORDS - 1) * REPLAY_WORD_BITS  # 8128 packets

DEFAULT_MTU = 1420
