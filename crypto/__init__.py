"""Cryptographic building blocks: fixed-point encoding, Paillier keys and
encrypted arrays, bucket multi-exponentiation, masks, DP noise.  Math only,
no I/O beyond key files and reading OS randomness."""
from crypto.encoding import DEFAULT_FRAC_BITS, DEFAULT_PLAIN_FRAC_BITS
from crypto.enc_array import DEFAULT_VALUE_BOUND, EncryptedArray
from crypto.masks import mask, random_mask, unmask
from crypto.noise import SecureGenerator
from crypto.paillier import PrivateKey, PublicKey, generate_keypair

__all__ = [
    "generate_keypair", "PublicKey", "PrivateKey", "EncryptedArray",
    "DEFAULT_FRAC_BITS", "DEFAULT_PLAIN_FRAC_BITS", "DEFAULT_VALUE_BOUND",
    "random_mask", "mask", "unmask", "SecureGenerator",
]
