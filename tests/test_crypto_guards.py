"""Guards of the crypto layer that a mutation-testing pass showed untested, the arbiter's zeros
(randomness -1, repeats across batches) and the CSPRNG-backed label-DP noise.

Each mutation named in a test's docstring (review/mutate.py ids) makes that test fail."""
from __future__ import annotations

import datetime as dt
import json
import os
import struct

import gmpy2
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from scipy import stats

from crypto import EncryptedArray, PrivateKey, PublicKey, SecureGenerator, generate_keypair, mask
from crypto.enc_array import _HEAD
from crypto.paillier import SeenZeros, check_zeros
from crypto.psi import NONCE_BYTES, bucket_key
from crypto.signing import PartySigner, PeerVerifier, SignatureError
from vfl.job.config import ModelConfig
from vfl.models.randomness import receive_zeros
from vfl.models.timing import Stopwatch
from tests.test_crypto_hardening import refused_everywhere


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(512)


# ---------------------------------------------------------------- masks (M06, M07)

def test_mask_rerandomises_the_masked_ciphertexts(keypair):
    """M06: without the re-randomisation ``[[g + r]]`` is ``[[g]] (1 + r n)``, which the arbiter links to
    a ``[[g]]`` it saw before (the ratio is ``1 + r n``): the masked ciphertexts must differ from add_raw's."""
    pk, sk = keypair
    enc = EncryptedArray.encrypt(pk, np.linspace(-3.0, 3.0, 64))
    masked, r = mask(enc)
    plain = enc.add_raw(r)
    assert all(a != b for a, b in zip(masked.ciphertexts.tolist(), plain.ciphertexts.tolist()))
    assert sk.decrypt_raw(masked.ciphertexts).tolist() == sk.decrypt_raw(plain.ciphertexts).tolist()
    unrandomised, r2 = mask(enc, rerandomize=False)           # the switch does what it says
    assert unrandomised.ciphertexts.tolist() == enc.add_raw(r2).ciphertexts.tolist()


def test_what_the_arbiter_decrypts_from_masked_values_is_spread_over_all_of_n(keypair):
    """M07: a mask drawn from [0, 2^64) leaves g + r in a sliver near 0 (or n) that tells the arbiter g's
    size and sign; a uniform mask mod n makes each decryption uniform in [0, n)."""
    pk, sk = keypair
    n = int(pk.n)
    enc = EncryptedArray.encrypt(pk, np.concatenate([np.zeros(128), np.full(64, 1e6), np.full(64, -2.5)]))
    masked, r = mask(enc)
    seen = [int(v) for v in sk.decrypt_raw(masked.ciphertexts)]
    top_bytes = {v * 256 // n for v in seen}
    assert len(top_bytes) > 120                             # 256 uniform draws: ~162 distinct, sd ~5
    upper = sum(v >= n // 2 for v in seen)
    assert 0.35 * len(seen) < upper < 0.65 * len(seen)       # the top bit is a fair coin
    assert min(seen) < n // 16 and max(seen) > n - n // 16
    rs = [int(v) for v in r]
    assert len({v * 256 // n for v in rs}) > 120 and max(rs).bit_length() > 500


# ---------------------------------------------------------------- encryption and sum headroom (M13, M39)

def test_encrypt_refuses_values_from_a_quarter_of_n(keypair):
    """M13: encryption allows |m| < n/4 so that one addition of two fresh values cannot wrap; at n/4
    and above it refuses (a limit of n would accept values whose sum decrypts negative)."""
    pk, sk = keypair
    n, f = int(pk.n), 440
    quarter = n / 4 / 2.0**f                                 # n/4 in value units at f fractional bits
    for bad in (1.01 * quarter, -1.01 * quarter, 1.9 * quarter, 3.5 * quarter):
        with pytest.raises(ValueError, match="fixed-point overflow"):
            EncryptedArray.encrypt(pk, np.array([1.0, bad]), frac_bits=f)
    ok = 0.99 * quarter
    total = EncryptedArray.encrypt(pk, np.array([ok]), frac_bits=f) + EncryptedArray.encrypt(pk, np.array([ok]),
                                                                                             frac_bits=f)
    assert total.decrypt(sk)[0] == pytest.approx(2 * ok, rel=1e-12)


def test_sum_refuses_a_sum_that_could_wrap(keypair):
    """M39: sum() checks count * value_bound against n/2. 2^9 terms at 470 fractional bits under the
    default bound 2^32 could reach 2^511 > n/2 (refused), 2^7 terms cannot; and four values just under
    n/4 (declared as the bound) would sum past n/2 and decrypt as a negative number."""
    pk, sk = keypair
    n = int(pk.n)
    for shape, axis in (((512,), None), ((2, 512), 1), ((512, 3), 0)):
        with pytest.raises(ValueError, match="sum could overflow"):
            EncryptedArray.encrypt(pk, np.zeros(shape), frac_bits=470).sum(axis=axis)
    assert EncryptedArray.encrypt(pk, np.ones(128), frac_bits=470).sum().decrypt(sk) == 128.0
    f = 440
    v = 0.24 * n / 2.0**f
    with pytest.raises(ValueError, match="sum could overflow"):
        EncryptedArray.encrypt(pk, np.full(4, v), frac_bits=f).sum(value_bound=v)
    two = EncryptedArray.encrypt(pk, np.full(2, v), frac_bits=f).sum(value_bound=v)
    assert two.decrypt(sk) == pytest.approx(2 * v, rel=1e-12)


# ---------------------------------------------------------------- wire and key files (M35, M22, M37)

def test_from_bytes_refuses_frac_bits_beyond_the_plaintext_space(keypair):
    """M35: a blob's frac_bits is a peer's claim; past 8 * len(n) bits no value fits, and a huge one
    (2^32 - 1) would make every later rescale or decode absurd. Refused on parsing."""
    pk, _ = keypair
    blob = bytearray(EncryptedArray.encrypt(pk, np.array([1.0, 2.0])).to_bytes())
    nlen = (pk.bits + 7) // 8
    at = _HEAD.size + nlen
    for bad in (8 * nlen + 1, 2**31, 2**32 - 1):
        struct.pack_into(">I", blob, at, bad)
        with pytest.raises(ValueError, match=f"frac_bits {bad} exceeds"):
            EncryptedArray.from_bytes(bytes(blob))
        with pytest.raises(ValueError, match=f"frac_bits {bad} exceeds"):
            EncryptedArray.from_bytes(bytes(blob), public_key=pk)
    struct.pack_into(">I", blob, at, 8 * nlen)               # the largest accepted
    assert EncryptedArray.from_bytes(bytes(blob)).frac_bits == 8 * nlen


def test_an_even_modulus_is_refused_everywhere_a_key_is_built(keypair):
    """M22: n = p q is odd; an even "modulus" (a peer's) is no Paillier key: PublicKey, a key file and
    an encrypted array's header all refuse it."""
    pk, _ = keypair
    for even in (int(pk.n) + 1, 2 * int(pk.n), 16):
        with pytest.raises(ValueError, match="odd composite"):
            PublicKey(even)
        with pytest.raises(ValueError, match="odd composite"):
            PublicKey.from_dict({**pk.to_dict(), "n": format(even, "x")})
    blob = bytearray(EncryptedArray.encrypt(pk, np.array([1.0])).to_bytes())
    nlen = (pk.bits + 7) // 8
    blob[_HEAD.size:_HEAD.size + nlen] = (int(pk.n) + 1).to_bytes(nlen, "big")
    with pytest.raises(ValueError, match="odd composite"):
        EncryptedArray.from_bytes(bytes(blob))


def test_private_key_file_with_a_composite_factor_is_refused(keypair, tmp_path):
    """M37: a key file's p and q must be primes (a composite p gives a key whose CRT decryption is
    wrong, and whose n has small factors)."""
    pk, sk = keypair
    path = tmp_path / "key.json"
    sk.save(path)
    good = json.loads(path.read_text())
    p, q = int(sk.p), int(sk.q)
    for fields in ({"p": 3 * p}, {"q": 3 * q}, {"p": p * q, "q": 5 * 7}, {"p": 561}):   # 561: Carmichael
        path.write_text(json.dumps({**good, **{k: format(v, "x") for k, v in fields.items()}}))
        with pytest.raises(ValueError, match="must be primes"):
            PrivateKey.load(path)
    path.write_text(json.dumps(good))
    assert PrivateKey.load(path).public_key == pk


# ---------------------------------------------------------------- relayed-value signatures (M24)

def _ca():
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _party_cert(ca, name: str, start: dt.timedelta, end: dt.timedelta) -> tuple[bytes, bytes]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + start).not_valid_after(now + end)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_peer_verifier_refuses_certificates_outside_their_validity_window():
    """M24: an expired certificate (its key may since have leaked) or one not valid yet is refused,
    though issued by the job's CA for the right name and with a good signature."""
    ca = _ca()
    verifier = PeerVerifier(ca[1].public_bytes(serialization.Encoding.PEM))
    data = b"a host's secure-sum key"
    day = dt.timedelta(days=1)
    for start, end, ok in ((-day, day, True), (-2 * day, -day, False), (day, 2 * day, False),
                           (-day, -dt.timedelta(minutes=1), False)):
        cert_pem, key_pem = _party_cert(ca, "host0", start, end)
        signature = PartySigner(cert_pem, key_pem).sign(data)
        if ok:
            verifier.verify("host0", cert_pem, data, signature)
        else:
            with pytest.raises(SignatureError, match="host0's certificate is not valid now"):
                verifier.verify("host0", cert_pem, data, signature)


# ---------------------------------------------------------------- PSI bucket key (M34)

def test_bucket_key_depends_on_every_partys_nonce():
    """M34: the key must be uniform as long as one party's nonce is. Derived from the guest's nonce
    alone, a guest could fix it (and steer IDs into buckets); every nonce, host's or guest's, and
    their order, must change it."""
    nonces = [os.urandom(NONCE_BYTES) for _ in range(4)]
    key = bucket_key(nonces, 16)
    assert len(key) == 32 and bucket_key(list(nonces), 16) == key
    for i in range(len(nonces)):
        changed = list(nonces)
        changed[i] = os.urandom(NONCE_BYTES)
        assert bucket_key(changed, 16) != key, f"nonce {i} does not affect the bucket key"
    assert bucket_key(nonces[::-1], 16) != key
    assert bucket_key(nonces, 17) != key
    assert bucket_key(nonces[:2], 16) != bucket_key(nonces[:3], 16)


# ---------------------------------------------------------------- the arbiter's zeros

class _OneMessage:
    def __init__(self, payload):
        self.payload = payload

    def recv(self, sender, step):
        return self.payload


def _receive(pk, cts, rows=None):
    model = ModelConfig(key_bits=512, allow_short_keys=True)
    sent = EncryptedArray(pk, np.array([gmpy2.mpz(c) for c in cts], dtype=object), 0)
    return receive_zeros(_OneMessage(sent), model, "arbiter", pk, "lr", 0, 0, len(cts) if rows is None else rows,
                         Stopwatch())


def test_zeros_of_randomness_minus_one_are_refused(keypair):
    """z = (n - 1)^n = -1 (mod n) is public randomness: c z^-1 = 1 + m n and anyone reads m.
    Refused like z = 1, with z (1 + k n) (the same randomness) too."""
    pk, sk = keypair
    n, n2 = int(pk.n), int(pk.n) ** 2
    z = int(gmpy2.powmod(n - 1, n, n2))
    x = np.array([0.5, -1.0, 2.0])
    d = EncryptedArray.encrypt(pk, x)
    for bad in (z, z * (1 + 7 * n) % n2, n - 1):
        cts = [bad, *sk.zeros(2)]
        with pytest.raises(ValueError, match=r"encryption of zero 0 has trivial randomness \(z = -1 mod n\)"):
            check_zeros(cts, n)
        refused_everywhere(pk, x, d, cts)
        with pytest.raises(ValueError, match="the arbiter's encryptions of zero: .*trivial randomness"):
            _receive(PublicKey(n), cts)


def test_the_reviewers_minus_one_attack_is_stopped(keypair):
    """The review's repro: with z = -1 accepted, stripping the public randomness read the plaintext."""
    pk, _ = keypair
    n, n2 = int(pk.n), int(pk.n) ** 2
    z = gmpy2.powmod(n - 1, n, n2)
    m = (z * (1 + 123456 * n) % n2) * gmpy2.invert(z, n2) % n2
    assert (m - 1) // n == 123456                        # what accepting it would have given away
    with pytest.raises(ValueError, match="trivial randomness"):
        pk.encrypt_raw([123456], zeros=[z])


def test_zeros_sent_again_in_a_later_batch_are_refused_on_receipt(keypair):
    """The same zeros in two batches pass a per-batch check, and the ratio of the two ciphertexts made
    with them is Enc(u1 - u2) with randomness 1: the guest reads the difference of a host's scores.
    A party's key object remembers what it accepted in the job and refuses a zero seen before, with
    the error a repeat within one batch gets."""
    pk0, sk = keypair
    pk = PublicKey(int(pk0.n))                            # this job's key object
    n, n2 = int(pk.n), int(pk.n) ** 2
    first = list(sk.zeros(5))
    assert _receive(pk, first).shape == (5,)
    with pytest.raises(ValueError, match="the arbiter's encryptions of zero: encryption of zero 0 repeats "
                                         "another's randomness"):
        _receive(pk, first)
    fresh = list(sk.zeros(4))
    for again in (first[2], first[2] * (1 + n) % n2):     # the same, or the same randomness
        with pytest.raises(ValueError, match="encryption of zero 3 repeats another's randomness"):
            _receive(pk, fresh[:3] + [again] + fresh[3:])
    assert _receive(pk, fresh).shape == (4,)              # a refused batch was not remembered
    with pytest.raises(ValueError, match="encryption of zero 1 repeats another's randomness"):
        _receive(pk, [sk.zeros(1)[0], fresh[0]])
    z = sk.zeros(2)
    with pytest.raises(ValueError, match="encryption of zero 2 repeats another's randomness"):   # within one
        _receive(pk, [z[0], z[1], z[0]])
    assert len(pk.seen_zeros) == 9
    assert _receive(PublicKey(n), first).shape == (5,)    # another job's key object has its own memory


def test_check_zeros_remembers_every_earlier_call_it_is_given_a_memory_for(keypair):
    """check_zeros without ``seen`` checks one call; with a SeenZeros it refuses anything seen in any
    earlier call (many calls of many sizes: the sorted runs merge as they grow)."""
    pk, _ = keypair
    n = int(pk.n)
    rng = np.random.default_rng(5)

    def residues(k):
        return [int.from_bytes(os.urandom(64), "big") % (n - 3) + 2 for _ in range(k)]

    batch = residues(3)
    check_zeros(batch, n)
    check_zeros(batch, n)                                 # stateless without a memory
    seen, accepted = SeenZeros(), []
    for _ in range(80):
        b = residues(int(rng.integers(1, 40)))
        check_zeros(b, n, seen=seen)
        accepted += b
    assert len(seen) == len(accepted)
    for _ in range(40):
        old = accepted[int(rng.integers(len(accepted)))]
        at = int(rng.integers(0, 6))
        b = residues(5)
        b.insert(at, old + int(rng.integers(1, 1000)) * n)   # equal mod n
        with pytest.raises(ValueError, match=f"encryption of zero {at} repeats another's randomness"):
            check_zeros(b, n, seen=seen)
    assert len(seen) == len(accepted)
    check_zeros([], n, seen=seen)
    assert len(seen) == len(accepted)


# ---------------------------------------------------------------- label-DP noise from the OS CSPRNG

def test_secure_generator_draws_standard_normals():
    """Mean, sd, tails and the shape of the distribution (Kolmogorov-Smirnov) of 200,000 draws,
    and no correlation between the two normals of a Box-Muller pair. Tolerances are ~5-6 standard
    errors (KS: p > 1e-6): a correct generator fails about once in a million runs."""
    g = SecureGenerator()
    x = g.standard_normal(200_000)
    assert x.shape == (200_000,) and x.dtype == np.float64
    assert abs(x.mean()) < 6 / np.sqrt(x.size)
    assert abs(x.std() - 1.0) < 6 / np.sqrt(2 * x.size)
    assert stats.kstest(x, "norm").pvalue > 1e-6
    assert 400 < np.sum(np.abs(x) > 3) < 680                  # 0.27%: 540 expected, sd 23
    assert abs(np.corrcoef(x[0::2], x[1::2])[0, 1]) < 6 / np.sqrt(x.size / 2)
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 6 / np.sqrt(x.size)
    assert np.abs(x).max() < 8.6                              # the 53-bit uniforms' tail limit
    k = SecureGenerator._uniforms53(100_000)                 # the uniforms: every one of the 53 bits a fair coin
    bits = (k[:, None] >> np.arange(53, dtype=np.uint64)) & np.uint64(1)
    assert k.max() < 2**53 and np.all(np.abs(bits.mean(axis=0) - 0.5) < 6 * 0.5 / np.sqrt(k.size))
    y = g.normal(3.0, 0.5, (400, 250))
    assert y.shape == (400, 250)
    assert abs(y.mean() - 3.0) < 6 * 0.5 / np.sqrt(y.size) and abs(y.std() - 0.5) < 6 * 0.5 / np.sqrt(2 * y.size)
    assert stats.kstest(y.ravel(), "norm", args=(3.0, 0.5)).pvalue > 1e-6


def test_secure_generators_give_different_streams_and_follow_numpys_interface():
    a, b = SecureGenerator(), SecureGenerator()
    xa, xb, xa2 = a.normal(0.0, 1.0, 1000), b.normal(0.0, 1.0, 1000), a.normal(0.0, 1.0, 1000)
    assert not set(xa.tolist()) & set(xb.tolist()) and not set(xa.tolist()) & set(xa2.tolist())
    assert isinstance(a.normal(0.0, 2.0), float) and isinstance(a.standard_normal(), float)
    assert a.normal(1.0, 0.0, 3).tolist() == [1.0, 1.0, 1.0]
    assert a.normal(0.0, 1.0, 0).shape == (0,) and a.normal(0.0, 1.0, 7).shape == (7,)
    assert a.normal(np.zeros(4), 1.0).shape == (4,) and a.standard_normal(5, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="non-negative"):
        a.normal(0.0, -1.0, 3)


def test_the_label_dp_noise_of_validation_and_binning_comes_from_the_os_csprng(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from vfl.models.validation import EarlyStopping, early_stopping_for
    from vfl.preprocess import stage
    from vfl.preprocess.binning import NUMERIC
    assert isinstance(EarlyStopping(3, noise_sd=0.1).rng, SecureGenerator)
    assert isinstance(early_stopping_for(ModelConfig(), 1000).rng, SecureGenerator)
    draws = []

    class Recorder(SecureGenerator):
        def normal(self, loc=0.0, scale=1.0, size=None):
            draws.append((scale, size))
            return super().normal(loc, scale, size)
    monkeypatch.setattr(stage, "SecureGenerator", Recorder)
    job = SimpleNamespace(output_dir=lambda name: tmp_path, guest=SimpleNamespace(name="guest"))
    bins = [SimpleNamespace(rows=np.array([100, 50, 10]), edges=[1.0, 2.0], kind=NUMERIC)]
    counts = {"host0": [(np.array([60, 60]), np.array([20, 30]), 2)]}
    seen, noised = stage._noised_release(job, False, 2.0, bins, [np.array([40, 25, 5])], counts, None)
    assert draws == [(2.0, 3), (2.0, 2)]                     # own bins, then the host's, from the OS CSPRNG
    assert np.all((seen[0] >= 0) & (seen[0] <= [100, 50, 10])) and noised["host0"][0][1].shape == (2,)
