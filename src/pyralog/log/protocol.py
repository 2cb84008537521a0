"""Kafka wire frames on top of `kio`: decode a request, build and encode a response.

`kio` supplies the typed schemas (every API version, flexible versions, tagged fields)
and their readers and writers. What is written here is only the glue a broker needs:
splitting the size-prefixed frame, choosing the schema from the api key and version,
and `build`, which constructs a response entity of whatever version was asked from
plain dicts, dropping fields that version lacks and converting milliseconds, error codes
and timestamps into the types kio expects. Handlers can then be written once for every
version of an API.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import logging
import struct
import types
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from kio.index import UnknownAPIKey, UnknownEntity, load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.serial.errors import BufferUnderflow

log = logging.getLogger("pyralog.log.protocol")

# Kafka's socket.request.max.bytes default: a bigger size prefix is refused unread.
MAX_FRAME_BYTES = 100 * 1024 * 1024
# api_key, api_version, correlation_id: present in every request header version.
_PREFIX = struct.Struct(">hhi")

API_VERSIONS_KEY = 18


class MalformedRequest(ValueError):
    """A frame that cannot be a request; the connection is closed after it."""


@dataclass(frozen=True, slots=True)
class UnsupportedVersion(Exception):
    """A well-framed request whose api key or version this broker does not serve."""

    api_key: int
    api_version: int
    correlation_id: int


@dataclass(frozen=True, slots=True)
class Request:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: Any
    size: int
    # The connection's remote address, set by the broker (JoinGroup's client_host).
    peer_host: str = ""


def frame_size(prefix: bytes, minimum: int = _PREFIX.size) -> int:
    """The body size announced by a 4-byte size prefix, bounded."""
    (size,) = struct.unpack(">i", prefix)
    if size < minimum:
        raise MalformedRequest(f"frame size {size} is below the smallest header ({minimum})")
    if size > MAX_FRAME_BYTES:
        raise MalformedRequest(f"frame size {size} exceeds the {MAX_FRAME_BYTES}-byte bound")
    return size


def peek(frame: bytes) -> tuple[int, int, int]:
    """api_key, api_version, correlation_id of a frame (without its size prefix)."""
    if len(frame) < _PREFIX.size:
        raise MalformedRequest("frame too short for a request header")
    return _PREFIX.unpack_from(frame)


def decode_request(frame: bytes, supported: Mapping[int, tuple[int, int]]) -> Request:
    """Decode one request frame (size prefix removed) for the api versions `supported`."""
    api_key, api_version, correlation_id = peek(frame)
    span = supported.get(api_key)
    if span is None or not span[0] <= api_version <= span[1]:
        raise UnsupportedVersion(api_key, api_version, correlation_id)
    try:
        schema = load_request_schema(api_key, api_version)
    except (UnknownAPIKey, UnknownEntity):
        raise UnsupportedVersion(api_key, api_version, correlation_id) from None
    try:
        header, used = schema_reader(schema.__header_schema__)(frame, 0)
        body, body_used = schema_reader(schema)(frame, used)
    except (BufferUnderflow, ValueError, UnicodeDecodeError, OverflowError, TypeError) as e:
        raise MalformedRequest(f"api {api_key} v{api_version}: {e}") from None
    except Exception as e:  # the native reader raises its own types on garbage
        raise MalformedRequest(f"api {api_key} v{api_version}: {type(e).__name__}: {e}") from None
    if used + body_used != len(frame):
        # Bytes after a complete body are ignored, as Apache Kafka ignores them: librdkafka
        # 2.16's all-topics Metadata v12 carries three (docs/REPLICATION_BENCHMARKS.md),
        # and Kafka answers it. The body itself was read whole and checked.
        log.debug("api %s v%s: %d bytes after the body ignored", api_key, api_version,
                  len(frame) - used - body_used)  # fmt: skip
    if (field := _null_array(schema, body)) is not None:
        raise MalformedRequest(f"api {api_key} v{api_version}: non-nullable {field} is null")
    return Request(api_key, api_version, correlation_id, header.client_id, body, len(frame))


def encode_response(api_key: int, api_version: int, correlation_id: int, body: Any) -> bytes:
    """Size prefix, response header (v0 or v1 as the schema says), then the body."""
    schema = load_response_schema(api_key, api_version)
    out = io.BytesIO()
    out.write(b"\0\0\0\0")
    header_schema = schema.__header_schema__
    schema_writer(header_schema)(out, header_schema(correlation_id=correlation_id))
    schema_writer(schema)(out, body)
    data = out.getbuffer()
    struct.pack_into(">i", data, 0, len(data) - 4)
    return bytes(data)


def encode_request(
    api_key: int, api_version: int, correlation_id: int, client_id: str | None, body: Any
) -> bytes:
    """A size-prefixed request frame (the client side)."""
    schema = load_request_schema(api_key, api_version)
    out = io.BytesIO()
    out.write(b"\0\0\0\0")
    header_schema = schema.__header_schema__
    header = header_schema(
        request_api_key=api_key,
        request_api_version=api_version,
        correlation_id=correlation_id,
        client_id=client_id,
    )
    schema_writer(header_schema)(out, header)
    schema_writer(schema)(out, body)
    data = out.getbuffer()
    struct.pack_into(">i", data, 0, len(data) - 4)
    return bytes(data)


def decode_response(api_key: int, api_version: int, frame: bytes) -> tuple[int, Any]:
    """(correlation_id, body) of a response frame (size prefix removed)."""
    schema = load_response_schema(api_key, api_version)
    try:
        header, used = schema_reader(schema.__header_schema__)(frame, 0)
        body, _ = schema_reader(schema)(frame, used)
    except Exception as e:
        raise MalformedRequest(f"response to api {api_key} v{api_version}: {e}") from None
    return header.correlation_id, body


def request(api_key: int, api_version: int, data: Mapping[str, Any]) -> Any:
    """The request entity of that api and version, built from `data` (see `build`)."""
    return build(load_request_schema(api_key, api_version), data)


def response(api_key: int, api_version: int, data: Mapping[str, Any]) -> Any:
    """The response entity of that api and version, built from `data` (see `build`)."""
    return build(load_response_schema(api_key, api_version), data)


def build(schema: type, data: Mapping[str, Any]) -> Any:
    """Construct a kio entity from plain values, for any version of its schema.

    Keys the version lacks are dropped; missing keys take the schema default. Nested
    arrays are lists of dicts; error codes are ints; `timedelta_*` fields take
    milliseconds; `datetime_i64` takes epoch milliseconds (-1 → None).
    """
    kwargs: dict[str, Any] = {}
    for name, (kind, nested, optional, required) in _fields(schema).items():
        if name not in data:
            # A nullable field or array with no default: absent means null or empty.
            if required and optional:
                kwargs[name] = None
            elif required and nested is not None:
                kwargs[name] = ()
            continue
        value = data[name]
        if value is None and (optional or kind is None):
            kwargs[name] = None
        elif nested is not None and isinstance(value, list | tuple):
            kwargs[name] = tuple(
                build(nested, item) if isinstance(item, Mapping) else item for item in value
            )
        elif nested is not None and isinstance(value, Mapping):
            kwargs[name] = build(nested, value)
        else:
            kwargs[name] = _coerce(kind, value)
    return schema(**kwargs)


def _coerce(kind: str | None, value: Any) -> Any:
    if kind == "error_code":
        return value if isinstance(value, ErrorCode) else ErrorCode(int(value))
    if kind in ("timedelta_i32", "timedelta_i64"):
        return datetime.timedelta(milliseconds=value)
    if kind == "datetime_i64":
        if value is None or value < 0:
            return None
        return datetime.datetime.fromtimestamp(value / 1000, datetime.UTC)
    if kind == "uuid" and isinstance(value, bytes):
        return uuid.UUID(bytes=value)
    return value


def ms(value: datetime.timedelta | int | None) -> int:
    """Milliseconds from a kio timedelta field (or an int already)."""
    if value is None:
        return 0
    if isinstance(value, datetime.timedelta):
        return int(value.total_seconds() * 1000)
    return int(value)


@cache
def _fields(schema: type) -> dict[str, tuple[str | None, type | None, bool, bool]]:
    """name → (kafka_type, nested entity class, optional, required) for one schema."""
    hints = typing.get_type_hints(schema)
    out: dict[str, tuple[str | None, type | None, bool, bool]] = {}
    for f in dataclasses.fields(schema):
        hint = hints[f.name]
        optional = False
        args = typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            optional = type(None) in args
            hint = next(a for a in args if a is not type(None))
            args = typing.get_args(hint)
        nested: type | None = None
        if typing.get_origin(hint) is tuple and args and dataclasses.is_dataclass(args[0]):
            nested = args[0]
        elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
            nested = hint
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out[f.name] = (f.metadata.get("kafka_type"), nested, optional, required)
    return out


def _null_array(schema: type, entity: Any) -> str | None:
    """The name of a non-nullable array that came as null (length -1), if any.

    kio's reader checks null strings but returns None for any array, so without this a
    handler iterating a required array would fail on `None`; Kafka refuses such a request.
    """
    for name, (_, nested, optional, _) in _fields(schema).items():
        value = getattr(entity, name)
        if value is None:
            # Only an array can read as null where the schema says not nullable.
            if not optional:
                return name
            continue
        if nested is None:
            continue
        for item in value if isinstance(value, tuple) else (value,):
            if dataclasses.is_dataclass(item) and (inner := _null_array(nested, item)):
                return f"{name}.{inner}"
    return None


@cache
def schema_reader(schema: type) -> Any:
    return entity_reader(schema)


@cache
def schema_writer(schema: type) -> Any:
    return entity_writer(schema)


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)
