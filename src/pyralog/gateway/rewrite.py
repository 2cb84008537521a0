"""Rewriting the responses that name brokers, sans-IO, with kio's schemas.

Three APIs tell a client where brokers are: Metadata (``brokers``), FindCoordinator
(v0-v3 one ``node_id``/``host``/``port``, v4+ a ``coordinators`` array) and
DescribeCluster (``brokers``). Their answers are decoded with the schema of the
version asked, each broker's host and port replaced by the gateway's local port for
that broker id, and encoded again. Any other response goes through untouched.

ApiVersions is the fourth: the gateway lowers what it advertises so that a client never
picks a version whose answer the gateway could not rewrite (a Metadata version newer
than kio knows) or an API that names brokers some other way (Produce v10+ and Fetch
v16+ carry ``node_endpoints``, KIP-951; DescribeQuorum and the share-group APIs carry
listeners). A Pyralog broker advertises none of those today, so its ApiVersions answer
passes through byte for byte; the clamp is there for the broker of tomorrow.
"""

from __future__ import annotations

import dataclasses
import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from kio.index import UnknownAPIKey, UnknownEntity, load_response_schema

from pyralog.log.protocol import schema_reader, schema_writer

METADATA = 3
FIND_COORDINATOR = 10
API_VERSIONS = 18
DESCRIBE_CLUSTER = 60
# The APIs whose answers name brokers, rewritten here.
ADDRESSED = frozenset({METADATA, FIND_COORDINATOR, DESCRIBE_CLUSTER})
# The requests whose answers the gateway must see.
WATCHED = ADDRESSED | {API_VERSIONS}

# APIs that name brokers in ways not rewritten here, from these versions on; ApiVersions
# answers are clamped below them (an API clamped below its minimum is dropped).
UNREWRITTEN_FROM: dict[int, int] = {
    0: 10,  # Produce: node_endpoints (KIP-951)
    1: 16,  # Fetch: node_endpoints (KIP-951)
    4: 0,  # LeaderAndIsr (between brokers)
    6: 0,  # UpdateMetadata (between brokers)
    55: 0,  # DescribeQuorum: nodes and their listeners
    62: 0,  # BrokerRegistration
    70: 0,  # ControllerRegistration
    78: 0,  # ShareFetch: node_endpoints
    79: 0,  # ShareAcknowledge: node_endpoints
}


class RewriteError(ValueError):
    """A broker's answer that should name brokers but cannot be decoded."""


@dataclass(frozen=True, slots=True)
class Broker:
    """A broker as an answer names it: its id and the address it advertises."""

    node_id: int
    host: str
    port: int


# Maps a broker named in an answer to the (host, port) a local client should use.
Locate = Callable[[Broker], tuple[str, int]]


@cache
def newest_version(api_key: int) -> int:
    """The newest response version kio has a schema for (-1: none)."""
    version = -1
    while True:
        try:
            load_response_schema(api_key, version + 1)
        except (UnknownAPIKey, UnknownEntity):
            return version
        version += 1


def can_rewrite(api_key: int, api_version: int) -> bool:
    """Whether the answer to this request can be rewritten (kio has its schema)."""
    return 0 <= api_version <= newest_version(api_key)


@dataclass(frozen=True, slots=True)
class Answer:
    """A decoded response of one of the WATCHED APIs."""

    api_key: int
    api_version: int
    header: Any
    body: Any
    frame: bytes

    def brokers(self) -> list[Broker]:
        """Every broker the answer names (entries without a broker, such as a
        coordinator lookup's error, left out)."""
        return [Broker(*entry) for _, entry in _entries(self.api_key, self.api_version, self.body)]

    def rewrite(self, locate: Locate) -> bytes:
        """The frame with every broker address replaced by ``locate``'s (ApiVersions:
        clamped); the original bytes when nothing changed."""
        if self.api_key == API_VERSIONS:
            body = _clamped(self.body)
        else:
            body = _relocated(self.api_key, self.api_version, self.body, locate)
        if body == self.body:
            return self.frame
        return encode(self.api_key, self.api_version, self.header, body)


def decode(api_key: int, api_version: int, frame: bytes) -> Answer:
    """Decode a response frame (size prefix included) of that api and version."""
    schema = load_response_schema(api_key, api_version)
    try:
        header, used = schema_reader(schema.__header_schema__)(frame, 4)
        body, _ = schema_reader(schema)(frame, 4 + used)
    except Exception as e:  # kio's reader raises its own types on garbage
        raise RewriteError(
            f"response to api {api_key} v{api_version}: {type(e).__name__}: {e}"
        ) from None
    return Answer(api_key, api_version, header, body, frame)


def encode(api_key: int, api_version: int, header: Any, body: Any) -> bytes:
    """A size-prefixed response frame from a decoded header and body."""
    schema = load_response_schema(api_key, api_version)
    out = io.BytesIO()
    out.write(b"\0\0\0\0")
    schema_writer(schema.__header_schema__)(out, header)
    schema_writer(schema)(out, body)
    data = out.getbuffer()
    struct.pack_into(">i", data, 0, len(data) - 4)
    return bytes(data)


Entry = tuple[str, tuple[int, str, int]]


def _entries(api_key: int, api_version: int, body: Any) -> Iterator[Entry]:
    """(where, (node_id, host, port)) for each broker-naming entry of an answer;
    ``where`` is "" for the top level of a FindCoordinator v0-v3, else the index."""
    if api_key in (METADATA, DESCRIBE_CLUSTER):
        id_field = "node_id" if api_key == METADATA else "broker_id"
        for i, b in enumerate(body.brokers):
            yield str(i), (getattr(b, id_field), b.host, b.port)
    elif api_key == FIND_COORDINATOR:
        if api_version < 4:
            if body.node_id >= 0 and body.host:
                yield "", (body.node_id, body.host, body.port)
        else:
            for i, c in enumerate(body.coordinators):
                if c.node_id >= 0 and c.host:
                    yield str(i), (c.node_id, c.host, c.port)


def _relocated(api_key: int, api_version: int, body: Any, locate: Locate) -> Any:
    entries = dict(_entries(api_key, api_version, body))
    if not entries:
        return body
    moved = {where: locate(Broker(*entry)) for where, entry in entries.items()}
    if api_key == FIND_COORDINATOR and api_version < 4:
        host, port = moved[""]
        return dataclasses.replace(body, host=host, port=port)
    name = "coordinators" if api_key == FIND_COORDINATOR else "brokers"
    items = tuple(
        dataclasses.replace(item, host=moved[str(i)][0], port=moved[str(i)][1])
        if str(i) in moved
        else item
        for i, item in enumerate(getattr(body, name))
    )
    return dataclasses.replace(body, **{name: items})


def _clamped(body: Any) -> Any:
    """An ApiVersions answer without the versions the gateway cannot carry."""
    keys = []
    for api in body.api_keys or ():
        top = api.max_version
        if api.api_key in ADDRESSED:
            top = min(top, newest_version(api.api_key))
        if api.api_key in UNREWRITTEN_FROM:
            top = min(top, UNREWRITTEN_FROM[api.api_key] - 1)
        if top < api.min_version:
            continue
        keys.append(api if top == api.max_version else dataclasses.replace(api, max_version=top))
    if body.api_keys is None or tuple(keys) == body.api_keys:
        return body
    return dataclasses.replace(body, api_keys=tuple(keys))
