"""The payload codec refuses anything that is not exactly one of its four kinds."""
import numpy as np
import pytest

from crypto import EncryptedArray, generate_keypair
from vfl.protocol.messages import MAX_JSON_DEPTH, BigInts, MessageError, decode_payload, encode_payload, json_depth


@pytest.fixture(scope="module")
def pk():
    return generate_keypair(512)[0]


def test_round_trips(pk):
    for payload in ({"a": 1, "b": [1.5, "x"]}, np.arange(6, dtype=np.int64).reshape(2, 3),
                    np.array([b"a" * 32], dtype="S32"), BigInts.of([0, 2**200], 32)):
        back = decode_payload(encode_payload(payload))
        if isinstance(payload, np.ndarray):
            assert back.dtype == payload.dtype and np.array_equal(back, payload)
        else:
            assert back == payload
    enc = EncryptedArray.encrypt(pk, np.array([1.0, -2.0]))
    back = decode_payload(encode_payload(enc))
    assert back.with_key(pk).shape == (2,) and back.public_key == pk


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"\x09abc", "unknown payload tag"),
    (b"\x01[1, 2]", "JSON object"),
    (b"\x01{not json", "malformed control"),
    (encode_payload(BigInts.of([1, 2], 32))[:-1], "truncated integer array"),
    (encode_payload(BigInts.of([1, 2], 2)), "below 32 bytes"),
    (encode_payload(np.zeros(4))[:-3], "truncated array"),
    (b"\x02\x00\x03|O8\x01" + b"\x00" * 7 + b"\x01" + b"\x00" * 8, "not accepted"),
])
def test_malformed_payloads_are_refused(data, message):
    with pytest.raises(MessageError, match=message):
        decode_payload(data)


def test_tampered_ciphertext_blob_is_refused(pk):
    blob = encode_payload(EncryptedArray.encrypt(pk, np.ones(3)))
    with pytest.raises(MessageError, match="bad encrypted array"):
        decode_payload(blob[:-5])
    with pytest.raises(MessageError, match="cannot send"):
        encode_payload(object())
    with pytest.raises(MessageError, match="cannot be sent"):
        encode_payload(np.array([object()], dtype=object))


# ---------------------------------------------------------------------------- hardening
def _array_blob(dtype: bytes, shape, raw: bytes = b"") -> bytes:
    import struct
    return (struct.pack(">BH", 0x02, len(dtype)) + dtype + struct.pack(">B", len(shape))
            + struct.pack(f">{len(shape)}Q", *shape) + raw)


@pytest.mark.parametrize("data, message", [
    (b'\x01{"a": NaN}', "NaN is not allowed"),
    (b'\x01{"a": [1, -Infinity]}', "-Infinity is not allowed"),
    (b'\x01{"a": 1e999}', "overflows to inf"),
    (b'\x01{"a": 1, "a": 2}', "key 'a' appears twice"),
    (b'\x01{"x": {"b": 1, "b": 1}}', "key 'b' appears twice"),
    (b'\x01' + b'[' * 100_000 + b']' * 100_000, "nested 100000 deep; the limit is 32"),
    (b'\x01{"a": ' + b'[' * 33 + b']' * 33 + b'}', "nested 34 deep"),
    (b'\x01{"a": ' + b'9' * 5000 + b'}', "integer of 5000 digits exceeds the limit of 1300"),
    (b'\x01{"a": -' + b'9' * 1301 + b'}', "integer of 1301 digits"),
    (b'\x01{"a": 1.' + b'0' * 100 + b'}', "number literal of 102 characters"),
    (b'\x01' + b' ' * ((1 << 20) + 1), "exceeds the 1048576-byte limit"),
    (b'\x01\xff{}', "malformed control"),
    (_array_blob(b"<f8", (1 << 63, 2)), "truncated array: shape .* needs 147573952589676412928 bytes"),
    (_array_blob(b"<f8", (0, 2**64 - 1)), "absurd shape"),
    (_array_blob(b"<f8", (0, 2**32, 2**32)), "absurd shape"),  # numpy: "array is too big" (found by fuzzing)
    (_array_blob(b"|S0", (5,)), "not accepted"),
    (_array_blob(b"i4,i4", ()), "not accepted"),
    (_array_blob(b"<U4", (1,), b"\0" * 16), "not accepted"),
    (_array_blob(b"<f8", (1,) * 70, b"\0" * 8), "70 dimensions; the limit is 32"),
    (_array_blob(b"<f8", (2,))[:-3], "truncated array header: shape"),
    (_array_blob(b"<f8", (1,), b"\0" * 9), "over-long array"),
    (b"\x02\x00\x05<f8", "truncated array header"),
    (b"\x04" + b"\0" * 10, "width 0"),
    (encode_payload(BigInts.of([1, 2], 32)) + b"\0", "over-long integer array"),
])
def test_hostile_payloads_raise_message_error_only(data, message):
    with pytest.raises(MessageError, match=message):
        decode_payload(data)


def test_limits_leave_room_for_real_messages():
    n = 2**4095 + 1                      # a 4096-bit key's n: hex string, and as an int within the cap
    ok = {"n": format(n, "x"), "big": n, "deep": [[[[{"a": [1.5e-300, -0.0, 1e300]}]]]], "s": "[{\\\"]}"}
    assert decode_payload(encode_payload(ok)) == ok
    nested: dict = {}
    inner = nested
    for _ in range(MAX_JSON_DEPTH - 1):
        inner["x"] = {}
        inner = inner["x"]
    assert json_depth(encode_payload(nested)[1:]) == MAX_JSON_DEPTH
    assert decode_payload(encode_payload(nested)) == nested
    for arr in (np.zeros((0, 3)), np.zeros(()), np.ones((2, 1, 2), dtype=">f4"), np.array([True, False])):
        back = decode_payload(encode_payload(arr))
        assert back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back, arr)


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(b'{"a": "[[[[{{{{", "b": "\\\\", "c": ["\\"[["]}') == 2
    assert json_depth(b'') == 0
    assert json_depth(b'"\\\\"[[') == 2
