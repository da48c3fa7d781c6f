import numpy as np
import pytest

from crypto.encoding import (DEFAULT_FRAC_BITS, decode, decode_signed, encode, encode_int64,
                             encode_signed, to_signed)

N = (1 << 511) + 187  # odd stand-in modulus; encoding only needs its size


def test_round_trip_random_and_negative():
    rng = np.random.default_rng(0)
    x = rng.normal(scale=100.0, size=(7, 5))
    ints = encode(x, DEFAULT_FRAC_BITS, N)
    assert all(0 <= int(m) < N for m in ints.ravel())
    assert np.allclose(decode(ints, DEFAULT_FRAC_BITS, N), x, rtol=0, atol=2.0**-DEFAULT_FRAC_BITS)


def test_negatives_wrap_and_decode():
    ints = encode(np.array([-1.0, -0.5, 0.0, 0.5]), 1, N)
    assert [int(m) for m in ints] == [N - 2, N - 1, 0, 1]
    assert decode(ints, 1, N).tolist() == [-1.0, -0.5, 0.0, 0.5]


def test_extremes_and_scalars():
    for v in [0.0, -0.0, 1e-12, -1e-12, 1e15, -1e15, 2.0**-40, np.finfo(float).tiny]:
        back = decode(encode(v, DEFAULT_FRAC_BITS, N), DEFAULT_FRAC_BITS, N)
        assert back.shape == ()
        assert abs(float(back) - v) <= 2.0**-41
    huge = 2.0**400  # beyond int64, still far inside n/4 at 40 fractional bits
    assert float(decode(encode(-huge, 40, N), 40, N)) == -huge


def test_overflow_raises_clear_error():
    with pytest.raises(ValueError, match="overflow"):
        encode(2.0**470, 40, N)  # 510 bits >= n/4
    with pytest.raises(ValueError, match="NaN or infinity"):
        encode(np.array([1.0, np.nan]), 40, N)
    with pytest.raises(ValueError, match="62 bits"):
        encode_int64(np.array([2.0**40]), 24)


def test_signed_helpers():
    assert encode_signed([1.5, -2.25], 2).tolist() == [6, -9]
    assert encode_int64([[1.5, -2.25]], 2).dtype == np.int64
    assert to_signed(np.array([N - 1, 1, N // 2, N // 2 + 1], dtype=object), N).tolist() == [-1, 1, N // 2, -(N // 2)]
    assert decode_signed(np.array([3, -3], dtype=object), 1).tolist() == [1.5, -1.5]
