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

Decoding is strict because the bytes come from another organisation: any
malformed payload raises :class:`MessageError` (never ``ValueError``,
``RecursionError``, ``struct.error`` ...) before anything large is allocated.
Control messages are JSON objects of at most :data:`MAX_JSON_BYTES` bytes with
no ``NaN``/``Infinity`` (nor a float literal that overflows to infinity), no
repeated key in any object, nesting at most :data:`MAX_JSON_DEPTH` deep and
integers of at most :data:`MAX_JSON_INT_DIGITS` decimal digits (big numbers
such as a key's ``n`` travel as hex strings). Arrays carry a canonical dtype
string (``<f8``, ``|b1``, ``|S12``, ...), at most :data:`MAX_ARRAY_NDIM`
dimensions, and a shape whose element count matches the bytes that follow.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Union

import numpy as np

from crypto import EncryptedArray

_CONTROL, _ARRAY, _ENCRYPTED, _BIGINTS = 0x01, 0x02, 0x03, 0x04
_ALLOWED_KINDS = {"f", "i", "u", "b", "S"}
MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 32            # nested objects/arrays in a control message
MAX_JSON_INT_DIGITS = 1300     # a 4096-bit integer has 1234 decimal digits
MAX_JSON_FLOAT_CHARS = 64      # repr() of a float64 needs at most 24
MAX_ARRAY_NDIM = 32
_DTYPE_STR = re.compile(r"[<>|=][fiubS][0-9]{1,9}")


class MessageError(ValueError):
    """A payload that does not decode: truncated, tampered or of a wrong kind."""


MIN_BIGINT_WIDTH = 32
"""Bytes per integer at least (a 256-bit n; real keys have 2048): decoded, each value costs about
twice its wire size, where 2-byte values would cost eighteen times theirs."""


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
        arr = payload if payload.flags.c_contiguous else np.ascontiguousarray(payload)  # keeps 0-d arrays 0-d
        dt = arr.dtype.str.encode()
        head = struct.pack(">BH", _ARRAY, len(dt)) + dt + struct.pack(">B", arr.ndim)
        head += struct.pack(f">{arr.ndim}Q", *arr.shape)
        return head + arr.tobytes()
    raise MessageError(f"cannot send a {type(payload).__name__}")


def decode_payload(data: bytes) -> Payload:
    """Decode and validate bytes produced by :func:`encode_payload` (an encrypted array under the
    modulus it carries, at least ``MIN_N_BYTES``; decrypting it, or adding it to an array under the
    job's key, refuses another key)."""
    if not data:
        raise MessageError("empty payload")
    tag, body = data[0], memoryview(data)[1:]
    if tag == _CONTROL:
        return _decode_control(body)
    if tag == _ENCRYPTED:
        try:
            return EncryptedArray.from_bytes(body)    # a view: the body is not copied
        except ValueError as exc:
            raise MessageError(f"bad encrypted array: {exc}") from exc
    if tag == _BIGINTS:
        return _decode_bigints(body)
    if tag == _ARRAY:
        return _decode_array(body)
    raise MessageError(f"unknown payload tag 0x{tag:02x}")


class _Refused(Exception):
    """Internal: raised inside json.loads hooks, turned into MessageError by the caller."""


def _refuse_constant(name: str):
    raise _Refused(f"{name} is not allowed in a control message")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _Refused(f"integer of {len(text.lstrip('-'))} digits exceeds the limit of {MAX_JSON_INT_DIGITS}")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_JSON_FLOAT_CHARS:
        raise _Refused(f"number literal of {len(text)} characters exceeds the limit of {MAX_JSON_FLOAT_CHARS}")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text} overflows to {value}")
    return value


def _unique_keys(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Refused(f"key {dup[:64]!r} appears twice in one object")
    return obj


def json_depth(raw: bytes) -> int:
    """Deepest nesting of ``[``/``{`` outside strings, without recursion (numpy, linear).

    Exact for valid JSON; for invalid JSON it is at least the depth ``json.loads``
    reaches before it fails, so checking it first bounds the parser's recursion.
    """
    a = np.frombuffer(raw, dtype=np.uint8)
    if a.size == 0:
        return 0
    idx = np.arange(a.size)
    backslash = a == 0x5C
    # position of the last non-backslash at or before each index; a quote is escaped
    # when an odd run of backslashes precedes it
    last_plain = np.maximum.accumulate(np.where(backslash, -1, idx))
    run_before = np.zeros(a.size, dtype=np.int64)
    run_before[1:] = idx[:-1] - last_plain[:-1]
    quote = (a == 0x22) & (run_before % 2 == 0)
    in_string = (np.cumsum(quote) % 2).astype(bool) | quote
    opens = ((a == 0x5B) | (a == 0x7B)) & ~in_string
    closes = ((a == 0x5D) | (a == 0x7D)) & ~in_string
    depth = np.cumsum(opens.astype(np.int64) - closes.astype(np.int64))
    return int(depth.max())


def _decode_control(body: memoryview) -> dict:
    if len(body) > MAX_JSON_BYTES:
        raise MessageError(f"control message of {len(body)} bytes exceeds the {MAX_JSON_BYTES}-byte limit")
    raw = bytes(body)
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise MessageError(f"control message nested {depth} deep; the limit is {MAX_JSON_DEPTH}")
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_int=_parse_int,
                         parse_float=_parse_float, object_pairs_hook=_unique_keys)
    except _Refused as exc:
        raise MessageError(f"refused control message: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"malformed control message: {exc}") from None
    except (ValueError, RecursionError) as exc:  # belt and braces: the checks above should prevent these
        raise MessageError(f"malformed control message: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageError("control message must be a JSON object")
    return obj


def _decode_bigints(body: memoryview) -> BigInts:
    if len(body) < 10:
        raise MessageError("truncated integer array header")
    width, count = struct.unpack(">HQ", body[:10])
    if width == 0:
        raise MessageError("integer array of width 0")
    if width < MIN_BIGINT_WIDTH and count:
        raise MessageError(f"integer array of width {width}: below {MIN_BIGINT_WIDTH} bytes (these carry values "
                           "mod a Paillier n; narrow ones would decode to many times their size in memory)")
    if len(body) - 10 != width * count:
        what = "truncated" if len(body) - 10 < width * count else "over-long"
        raise MessageError(f"{what} integer array: {count} integers of {width} bytes need {width * count} "
                           f"bytes, got {len(body) - 10}")
    raw = body[10:]
    return BigInts(tuple(int.from_bytes(raw[i * width:(i + 1) * width], "big") for i in range(count)), width)


def _decode_array(body: memoryview) -> np.ndarray:
    if len(body) < 3:
        raise MessageError("truncated array header")
    (dlen,) = struct.unpack_from(">H", body, 0)
    pos = 2 + dlen
    if len(body) < pos + 1:
        raise MessageError("truncated array header: dtype or ndim missing")
    try:
        text = bytes(body[2:pos]).decode("ascii")
    except UnicodeDecodeError:
        raise MessageError("array dtype is not ASCII") from None
    if not _DTYPE_STR.fullmatch(text) or text[1] not in _ALLOWED_KINDS:
        raise MessageError(f"arrays of dtype {text[:32]!r} are not accepted")
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"arrays of dtype {text!r} are not accepted: {exc}") from None
    if dtype.kind not in _ALLOWED_KINDS or dtype.hasobject or dtype.itemsize == 0 or dtype.fields:
        raise MessageError(f"arrays of dtype {dtype} are not accepted")
    ndim = body[pos]
    pos += 1
    if ndim > MAX_ARRAY_NDIM:
        raise MessageError(f"array of {ndim} dimensions; the limit is {MAX_ARRAY_NDIM}")
    if len(body) < pos + 8 * ndim:
        raise MessageError(f"truncated array header: shape needs {8 * ndim} bytes, {len(body) - pos} left")
    shape = struct.unpack_from(f">{ndim}Q", body, pos)
    pos += 8 * ndim
    raw = body[pos:]
    # Python ints: no wrap-around; every size is checked against the bytes that arrived
    # before numpy sees the shape or anything is allocated
    count = math.prod(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "over-long"
        raise MessageError(f"{what} array: shape {shape[:8]}{'...' if ndim > 8 else ''} of {dtype} needs "
                           f"{expected} bytes, got {len(raw)}")
    if count == 0 and math.prod(max(d, 1) for d in shape) * dtype.itemsize > 1 << 40:
        # numpy refuses shapes whose non-zero dimensions overflow, even for empty arrays
        raise MessageError(f"empty array with an absurd shape {shape[:8]}")
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
