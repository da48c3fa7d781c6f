"""Typed payloads and their explicit wire encoding.

Peers are separate organisations, so nothing they send is ever unpickled or
evaluated. Every payload is one of four kinds, each with a fixed layout that is
validated on decode:

========  ====  ===========================================================
kind      tag   layout after the tag byte
========  ====  ===========================================================
control   0x01  UTF-8 JSON object (small: control words, scalars, key n)
array     0x02  u16 dtype-length, dtype str, u8 ndim, u64 shape[ndim], raw
encrypted 0x03  :meth:`crypto.EncryptedArray.to_bytes` (self-describing)
bigints   0x04  u16 width, u64 count, count fixed-width big-endian ints
========  ====  ===========================================================

Only plain numeric dtypes and fixed-width byte strings are accepted for
arrays; object arrays never cross the wire.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Union

import numpy as np

from crypto import EncryptedArray

_CONTROL, _ARRAY, _ENCRYPTED, _BIGINTS = 0x01, 0x02, 0x03, 0x04
_ALLOWED_KINDS = {"f", "i", "u", "b", "S"}
MAX_JSON_BYTES = 1 << 20


class MessageError(ValueError):
    """A payload that does not decode: truncated, tampered or of a wrong kind."""


@dataclass(frozen=True)
class BigInts:
    """Non-negative integers below ``2**(8*width)``, e.g. masked plaintexts mod n."""

    values: tuple[int, ...]
    width: int

    @classmethod
    def of(cls, values, width: int) -> "BigInts":
        return cls(tuple(int(v) for v in values), int(width))


Payload = Union[dict, np.ndarray, EncryptedArray, BigInts]


def encode_payload(payload: Payload) -> bytes:
    """Encode one payload to bytes (see the module table for layouts)."""
    if isinstance(payload, EncryptedArray):
        return bytes([_ENCRYPTED]) + payload.to_bytes()
    if isinstance(payload, dict):
        return bytes([_CONTROL]) + json.dumps(payload, sort_keys=True, allow_nan=False).encode()
    if isinstance(payload, BigInts):
        try:
            body = b"".join(v.to_bytes(payload.width, "big") for v in payload.values)
        except OverflowError as exc:
            raise MessageError(f"integer does not fit in {payload.width} bytes") from exc
        return struct.pack(">BHQ", _BIGINTS, payload.width, len(payload.values)) + body
    if isinstance(payload, np.ndarray):
        if payload.dtype.kind not in _ALLOWED_KINDS:
            raise MessageError(f"arrays of dtype {payload.dtype} cannot be sent")
        arr = np.ascontiguousarray(payload)
        dt = arr.dtype.str.encode()
        head = struct.pack(">BH", _ARRAY, len(dt)) + dt + struct.pack(">B", arr.ndim)
        head += struct.pack(f">{arr.ndim}Q", *arr.shape)
        return head + arr.tobytes()
    raise MessageError(f"cannot send a {type(payload).__name__}")


def decode_payload(data: bytes) -> Payload:
    """Decode and validate bytes produced by :func:`encode_payload`."""
    if not data:
        raise MessageError("empty payload")
    tag, body = data[0], memoryview(data)[1:]
    if tag == _CONTROL:
        if len(body) > MAX_JSON_BYTES:
            raise MessageError("control message too large")
        try:
            obj = json.loads(bytes(body).decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MessageError(f"malformed control message: {exc}") from exc
        if not isinstance(obj, dict):
            raise MessageError("control message must be a JSON object")
        return obj
    if tag == _ENCRYPTED:
        try:
            return EncryptedArray.from_bytes(bytes(body))
        except ValueError as exc:
            raise MessageError(f"bad encrypted array: {exc}") from exc
    if tag == _BIGINTS:
        return _decode_bigints(body)
    if tag == _ARRAY:
        return _decode_array(body)
    raise MessageError(f"unknown payload tag 0x{tag:02x}")


def _decode_bigints(body: memoryview) -> BigInts:
    if len(body) < 10:
        raise MessageError("truncated integer array header")
    width, count = struct.unpack(">HQ", body[:10])
    if width == 0 or len(body) - 10 != width * count:
        raise MessageError(f"truncated integer array: expected {width * count} bytes, got {len(body) - 10}")
    raw = body[10:]
    return BigInts(tuple(int.from_bytes(raw[i * width:(i + 1) * width], "big") for i in range(count)), width)


def _decode_array(body: memoryview) -> np.ndarray:
    try:
        (dlen,) = struct.unpack(">H", body[:2])
        dtype = np.dtype(bytes(body[2:2 + dlen]).decode())
        pos = 2 + dlen
        (ndim,) = struct.unpack(">B", body[pos:pos + 1])
        shape = struct.unpack(f">{ndim}Q", body[pos + 1:pos + 1 + 8 * ndim])
    except (struct.error, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"malformed array header: {exc}") from exc
    if dtype.kind not in _ALLOWED_KINDS or dtype.hasobject:
        raise MessageError(f"arrays of dtype {dtype} are not accepted")
    raw = body[pos + 1 + 8 * ndim:]
    expected = int(np.prod(shape, dtype=np.uint64)) * dtype.itemsize
    if len(raw) != expected:
        raise MessageError(f"truncated array: expected {expected} bytes, got {len(raw)}")
    return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape)


def describe(payload: Payload) -> str:
    """A short human description for logs and transcripts (never the values)."""
    if isinstance(payload, EncryptedArray):
        return f"encrypted{tuple(payload.shape)}"
    if isinstance(payload, np.ndarray):
        return f"array{payload.shape}:{payload.dtype}"
    if isinstance(payload, BigInts):
        return f"bigints[{len(payload.values)}]"
    return "control"
