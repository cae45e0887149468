"""Key types, algorithm families and PEM key loading: which key may check which algorithm.

The key type decides, never the token: HS* only with the shared secret, RS*/PS* only with RSA
keys, ES* only with an EC key on the matching curve, EdDSA only with Ed25519/Ed448.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

MAX_KEY_FILE = 1 << 20
MIN_RSA_BITS = 2048

HMAC_ALGORITHMS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1", "ES256K": "secp256k1"}
EDDSA_ALGORITHMS = frozenset({"EdDSA"})
SUPPORTED_ALGORITHMS = (*HMAC_ALGORITHMS, *sorted(RSA_ALGORITHMS), *EC_CURVES, "EdDSA")
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_CURVES) | EDDSA_ALGORITHMS
CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521", "secp256k1": "secp256k1"}


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def describe_key(key: Any) -> str:
    """`RSA 2048`, `EC P-256`, `Ed25519`: how messages name a key."""
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA {key.key_size}"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"EC {CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "Ed25519"
    if isinstance(key, (ed448.Ed448PublicKey, ed448.Ed448PrivateKey)):
        return "Ed448"
    return type(key).__name__


def unsupported_key(key: Any) -> str | None:
    """Why a (public) key cannot verify tokens here, or None when it can."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA key of {key.key_size} bits is too weak (at least {MIN_RSA_BITS})" if key.key_size < MIN_RSA_BITS else None
    if isinstance(key, ec.EllipticCurvePublicKey):
        return None if key.curve.name in CURVE_NAMES else f"EC curve {key.curve.name} is not supported (P-256, P-384, P-521, secp256k1)"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return None
    return f"{type(key).__name__} keys are not supported (RSA, EC, Ed25519 or Ed448)"


def key_fits(algorithm: str, key: Any) -> bool:
    """Whether `algorithm` may be checked with this public key: the key type decides, not the token."""
    if algorithm in RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm in EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == EC_CURVES[algorithm]
    if algorithm in EDDSA_ALGORITHMS:
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False  # HS* never uses a public key


def _read_key_file(path: str, what: str) -> bytes:
    if not os.path.isfile(path):
        raise ValueError(f"{what} file {path} not found")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise ValueError(f"{what} file {path} is larger than 1 MiB: not a PEM key")
    return data


def load_private_key(path: str) -> PrivateKey:
    """An unencrypted PEM private key (PKCS#8 or traditional); ValueError with the user's message."""
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"private key file {path} is encrypted; Backworks reads unencrypted PEM keys") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"private key file {path} holds no PEM private key") from None
    problem = unsupported_key(key.public_key())
    if problem is not None:
        raise ValueError(f"private key file {path}: {problem}")
    return key  # type: ignore[return-value]  # unsupported_key refused DH, DSA, X25519 and X448 above


def load_public_key(path: str) -> PublicKey:
    """A PEM public key (SubjectPublicKeyInfo or PKCS#1) or a PEM certificate's key."""
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise ValueError(f"public key file {path} holds a private key: name it in private_key, or give the public half here")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"public key file {path} holds no PEM public key or certificate") from None
    problem = unsupported_key(key)
    if problem is not None:
        raise ValueError(f"public key file {path}: {problem}")
    return key


def same_key(a: Any, b: Any) -> bool:
    form = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(a.public_bytes(*form) == b.public_bytes(*form))

