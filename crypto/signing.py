"""Signatures with a party's TLS identity, for values one party relays between two others.

TLS authenticates each link, but some values travel over two links: the guest
relays the hosts' secure-sum keys, so a host receiving them has only the guest's
word for who made them. A host therefore signs its key with the private key of
its TLS certificate, and every host checks the others' signatures against the
job's CA and the expected party name (the certificate's CN), exactly as the
transport checks a TLS peer. Keys are those of ``parties/certs.py``: EC (ECDSA
with SHA-256) or Ed25519.
"""
from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

MAX_CERT_PEM = 16_384          # a party certificate is about 700 bytes; refuse anything absurd
SUPPORTED_KEY_TYPES = "EC (ECDSA with SHA-256; P-256, P-384 or P-521 for TLS 1.3) or Ed25519"

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class SignatureError(ValueError):
    """A relayed value whose signature, certificate or signer is not the one expected."""


def _key_kind(key: object) -> str:
    for cls, name in ((rsa.RSAPrivateKey, "RSA"), (dsa.DSAPrivateKey, "DSA"), (ed448.Ed448PrivateKey, "Ed448")):
        if isinstance(key, cls):
            return name
    return type(key).__name__


def load_signing_key(key_pem: bytes) -> SigningKey:
    """A party's TLS private key, refused with a clear :class:`SignatureError` unless it is unencrypted
    PEM of a type :class:`PartySigner` can sign with: called when a party starts (parties/transport.py),
    so a wrong key fails there and not at the first relayed value, mid-job."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)   # never prompts
    except TypeError:       # "Password was not given but private key is encrypted"
        raise SignatureError("it is encrypted (passphrase-protected), which parties do not support: store "
                             "it unencrypted in a file only the party's account can read (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"it is not a PEM private key of a supported type: {exc}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)):
        raise SignatureError(f"it is an {_key_kind(key)} key, which cannot sign relayed values (secure-sum "
                             f"keys); party keys must be {SUPPORTED_KEY_TYPES}")
    return key


class PartySigner:
    """Signs with one party's TLS private key; hands out its certificate beside each signature."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.cert_pem = cert_pem
        try:
            self._key = load_signing_key(key_pem)
        except SignatureError as exc:
            raise SignatureError(f"TLS key: {exc}") from None

    def __repr__(self) -> str:
        return "PartySigner(<secret>)"

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self._key.sign(data)


class PeerVerifier:
    """Checks that a signature was made by the party ``name`` as certified by the job's CA."""

    def __init__(self, ca_pem: bytes) -> None:
        self._ca = x509.load_pem_x509_certificate(ca_pem)

    def verify(self, name: str, cert_pem: bytes, data: bytes, signature: bytes) -> None:
        """Return quietly if ``signature`` over ``data`` is ``name``'s; else :class:`SignatureError`."""
        if not cert_pem or not signature:
            raise SignatureError(f"{name}'s value is not signed")
        if len(cert_pem) > MAX_CERT_PEM:
            raise SignatureError(f"{name}'s certificate is {len(cert_pem)} bytes; the limit is {MAX_CERT_PEM}")
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise SignatureError(f"{name}'s certificate does not parse: {exc}") from None
        try:
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature):
            raise SignatureError(f"{name}'s certificate is not issued by the job's CA") from None
        now = dt.datetime.now(dt.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise SignatureError(f"{name}'s certificate is not valid now")
        cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if cns != [name]:
            raise SignatureError(f"signature by {cns or 'no CN'}, expected {name!r}")
        key = cert.public_key()
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            elif isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, data)
            else:
                raise SignatureError(f"{name}'s certificate key type {type(key).__name__} is not supported")
        except InvalidSignature:
            raise SignatureError(f"{name}'s signature does not verify: the value was changed in transit") from None
