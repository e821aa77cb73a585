"""One-dimensional bytea[], text[] and uuid[] parameters in PostgreSQL's binary array
format, built in one pass: a claim of 500 items sends three arrays, and psycopg's own list
dumper, which adapts element by element in Python, cost the dedupe actor more CPU than the
rest of the claim (benchmarks/dedupe_backends.py).

    conn.execute("... unnest(%(h)b::bytea[]) ...", {"h": bytea_array(hashes)})

register(conn) teaches a connection to send them (PgSession does it on connect).
The format (src/backend/utils/adt/arrayfuncs.c, array_recv): int32 dimensions, int32
has-nulls flag, element type oid, then per dimension int32 length and lower bound; then
per element int32 byte length (-1 for NULL) and the bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

BYTEA_OID, TEXT_OID, UUID_OID = 17, 25, 2950
BYTEA_ARRAY_OID, TEXT_ARRAY_OID, UUID_ARRAY_OID = 1001, 1009, 2951
_HEADER = struct.Struct(">iiiii")
_NULL = struct.pack(">i", -1)
_length = struct.Struct(">i").pack
_UUID_LENGTH = _length(16)


class ByteaArray:
    """A bytea[] parameter, already in the binary wire format (held, not copied)."""

    __slots__ = ("wire",)

    def __init__(self, wire: bytes):
        self.wire = wire


class TextArray(ByteaArray):
    """A text[] parameter, already in the binary wire format."""

    __slots__ = ()


class UuidArray(ByteaArray):
    """A uuid[] parameter, already in the binary wire format."""

    __slots__ = ()


def _encode(values: Sequence[bytes | None], elem_oid: int) -> bytes:
    has_null = None in values
    header = _HEADER.pack(1, int(has_null), elem_oid, len(values), 1)
    if has_null:
        return header + b"".join([_NULL if v is None else _length(len(v)) + v for v in values])
    # A list of concatenations joined once: half the time of joining lengths and values
    # as they come from an iterator, for values of a claim's size.
    return header + b"".join([_length(len(v)) + v for v in values])


def bytea_array(values: Sequence[bytes | None]) -> ByteaArray:
    return ByteaArray(_encode(values, BYTEA_OID))


def text_array(values: Sequence[str]) -> TextArray:
    return TextArray(_encode([v.encode() for v in values], TEXT_OID))


def uuid_array(values: Sequence[bytes]) -> UuidArray:
    """values: 16 bytes each (a uuid's binary form is its 16 bytes, in order)."""
    if set(map(len, values)) - {16}:
        raise ValueError("a uuid is 16 bytes")
    header = _HEADER.pack(1, 0, UUID_OID, len(values), 1)
    return UuidArray(header + _UUID_LENGTH + _UUID_LENGTH.join(values) if values else header)


class _ByteaArrayDumper(Dumper):
    format = Format.BINARY
    oid = BYTEA_ARRAY_OID

    def dump(self, obj: ByteaArray) -> bytes:
        return obj.wire


class _TextArrayDumper(_ByteaArrayDumper):
    oid = TEXT_ARRAY_OID


class _UuidArrayDumper(_ByteaArrayDumper):
    oid = UUID_ARRAY_OID


def register(conn: psycopg.Connection) -> None:
    conn.adapters.register_dumper(ByteaArray, _ByteaArrayDumper)
    conn.adapters.register_dumper(TextArray, _TextArrayDumper)
    conn.adapters.register_dumper(UuidArray, _UuidArrayDumper)
