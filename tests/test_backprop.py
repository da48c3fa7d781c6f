"""encrypted_sums: every block of a tower decrypts to its plaintext twin's sums, at full or reduced precision."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from crypto import EncryptedArray, generate_keypair
from vfl.models.backprop import encrypted_sums, truncate_bits, with_coef_bits
from vfl.models.common import D_FRAC_BITS
from vfl.models.towers import Block, EmbeddingTower, TowerInput


@pytest.fixture(scope="module")
def setup():
    pk, sk = generate_keypair(512)
    rng = np.random.default_rng(0)
    n = 80
    tower = EmbeddingTower(2, [5, 3], 3, [6])
    params = tower.init_params(1)
    u, cache = tower.forward(params, TowerInput(rng.normal(size=(n, 2)), rng.integers(0, [5, 3], (n, 2))))
    blocks = tower.blocks(params, cache) + [Block("loss", u[:, None], release=False)]
    d = rng.normal(size=n) * 0.5
    enc = EncryptedArray.encrypt(pk, d, frac_bits=D_FRAC_BITS)
    return sk, blocks, enc.decrypt(sk), enc


def _check(sums, blocks, d, sk, tol):
    assert len(sums) == len(blocks)
    for s, b in zip(sums, blocks):
        ref = b.plain_sums(d)
        assert s.shape == ref.shape
        np.testing.assert_allclose(s.decrypt(sk), ref, rtol=0, atol=tol)


def test_sums_match_the_plaintext_twin(setup):
    sk, blocks, d, enc = setup
    assert {b.name for b in blocks} >= {"out", "hidden0", "emb0", "emb1", "loss"}
    _check(encrypted_sums(enc, blocks), blocks, d, sk, 1e-5)


@pytest.mark.parametrize("bits", [0, 6, 12])
def test_coefficients_rounded_to_fewer_bits(setup, bits):
    """coef_bits cuts the released blocks' coefficients toward zero (not the loss part's); same scale."""
    sk, blocks, d, enc = setup
    sums = encrypted_sums(enc, blocks, coef_bits=bits)
    rounded = [replace(b, X=truncate_bits(b.X, bits)) if b.release else b for b in blocks]
    assert all(np.array_equal(r.X, w.X) for r, w in zip(rounded, with_coef_bits(blocks, bits)))  # twin's cut
    assert all(np.all(np.abs(r.X) <= np.abs(b.X)) for r, b in zip(rounded, blocks))  # clipping bounds hold
    _check(sums, rounded, d, sk, 1e-5)
    assert all(s.frac_bits == t.frac_bits for s, t in zip(sums, encrypted_sums(enc, blocks)))
    worst = max(np.abs(s.decrypt(sk) - b.plain_sums(d)).max() for s, b in zip(sums, blocks))
    assert worst > 1e-4 if bits < 12 else worst < np.abs(d).sum() * 2.0 ** -bits + 1e-5
    with pytest.raises(ValueError, match="coef_bits"):
        encrypted_sums(enc, blocks, coef_bits=25)
