"""The storage layer's exceptions, one per answer the broker gives a client.

Each maps to one Kafka error code in the protocol layer (KAFKA_STORAGE_ERROR,
OFFSET_OUT_OF_RANGE, MESSAGE_TOO_LARGE, TOPIC_ALREADY_EXISTS, INVALID_TOPIC_EXCEPTION,
UNKNOWN_TOPIC_OR_PARTITION, INVALID_CONFIG); the mapping lives there, not here, so the
files know nothing of the wire. Every message names what failed (partition, path, key).
"""

from __future__ import annotations


class StorageError(Exception):
    """A file operation failed (full disk, read-only file system, I/O error, bad layout)."""


class OffsetOutOfRange(Exception):
    """A read or lookup asked for an offset outside [log_start_offset, log_end_offset]."""


class RecordTooLarge(Exception):
    """A batch larger than the topic's max.message.bytes (or its segment.bytes)."""


class TopicExists(Exception):
    """create_topic for a name that already has a topic."""


class InvalidTopic(ValueError):
    """A topic name Kafka would refuse: not [a-zA-Z0-9._-]{1,249}, or "." or ".."."""


class UnknownTopic(KeyError):
    """An operation on a topic that does not exist."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; show the message as written.
        return str(self.args[0]) if self.args else ""


class TopicConfigError(ValueError):
    """A topic config key that is unknown or whose value is out of range or malformed."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        super().__init__(f"{key}={value!r}: {reason}")
        self.key = key
        self.value = value
