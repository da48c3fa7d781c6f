"""The payload codec refuses anything that is not exactly one of its four kinds."""
import numpy as np
import pytest

from crypto import EncryptedArray, generate_keypair
from vfl.messages import BigInts, MessageError, decode_payload, encode_payload


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
    (encode_payload(BigInts.of([1, 2], 8))[:-1], "truncated integer array"),
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
