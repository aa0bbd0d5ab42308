"""Detached signatures over ``bundle.json`` and receipts: Ed25519 or ECDSA P-256, PEM keys.

A signature file (``bundle.json.sig``, ``RECEIPT.sig``) is one line of text::

    replicator-signature-v1 ed25519 <base64 signature>

(``ecdsa-p256-sha256`` for ECDSA, whose signature is DER).  The signed bytes
are the whole document file, exactly as written.

Keys are PEM files as ``openssl`` writes them (docs/BUNDLES.md): a private key
(PKCS#8 or traditional, unencrypted, or encrypted with the passphrase in the
environment variable :data:`PASSPHRASE_ENV`) to sign, its public key to
verify.  A key of another kind or curve is refused with a message saying which
ones work.  Nothing here logs key material; a passphrase read is registered as
a secret.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from replicator.errors import InputError, IntegrityError
from replicator.observe.logging import register_secret

#: Environment variable holding the passphrase of an encrypted private key.
PASSPHRASE_ENV = "REPLICATOR_SIGN_KEY_PASSPHRASE"
#: First word of a signature file.
SIGNATURE_MAGIC = "replicator-signature-v1"
ED25519 = "ed25519"
ECDSA_P256 = "ecdsa-p256-sha256"
_MAX_KEY_FILE = 64 * 1024
_SUPPORTED = "Ed25519 or ECDSA P-256 (openssl genpkey -algorithm ed25519, or -algorithm EC -pkeyopt ec_paramgen_curve:P-256)"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise InputError(f"cannot read the {what} {path} ({exc.strerror})") from None
    if len(data) > _MAX_KEY_FILE:
        raise InputError(f"the {what} {path} is not a PEM key (too large)")
    return data


def _algorithm(key: PrivateKey | PublicKey, path: Path, what: str) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return ED25519
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return ECDSA_P256
        raise InputError(f"the {what} {path} is on curve {key.curve.name}: use {_SUPPORTED}")
    raise InputError(f"the {what} {path} is not a supported key: use {_SUPPORTED}")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key that signs documents."""

    key: PrivateKey
    algorithm: str
    path: Path

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Load a PEM private key; :class:`InputError` with the reason otherwise."""
        data = _read_key_file(path, "signing key")
        passphrase = os.environ.get(PASSPHRASE_ENV) or None
        if passphrase:
            register_secret(passphrase)
        try:
            key = serialization.load_pem_private_key(
                data, password=passphrase.encode() if passphrase else None
            )
        except TypeError:
            raise InputError(
                f"the signing key {path} is encrypted: set {PASSPHRASE_ENV} to its passphrase"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise InputError(
                f"the signing key {path} is not a PEM private key (or the passphrase is wrong)"
            ) from None
        if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise InputError(f"the signing key {path} is not a supported key: use {_SUPPORTED}")
        return cls(key, _algorithm(key, path, "signing key"), path)

    def sign(self, data: bytes) -> bytes:
        """The signature file's bytes for ``data``."""
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            signature = self.key.sign(data)
        else:
            signature = self.key.sign(data, ec.ECDSA(hashes.SHA256()))
        text = base64.b64encode(signature).decode("ascii")
        return f"{SIGNATURE_MAGIC} {self.algorithm} {text}\n".encode("ascii")


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """A public key that checks signatures."""

    key: PublicKey
    algorithm: str
    path: Path

    @classmethod
    def load(cls, path: Path) -> VerifyKey:
        """Load a PEM public key (a private key is accepted too: its public half is used)."""
        data = _read_key_file(path, "public key")
        try:
            key: object = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            try:
                key = serialization.load_pem_private_key(data, password=None).public_key()
            except (ValueError, TypeError, UnsupportedAlgorithm):
                raise InputError(f"the public key {path} is not a PEM public key") from None
        if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
            raise InputError(f"the public key {path} is not a supported key: use {_SUPPORTED}")
        return cls(key, _algorithm(key, path, "public key"), path)

    def check(self, data: bytes, signature_file: bytes, what: str) -> None:
        """Raise :class:`IntegrityError` unless ``signature_file`` signs ``data`` with this key.

        ``what`` names the signature file in the message.
        """
        words = signature_file.decode("ascii", "replace").split()
        if len(words) != 3 or words[0] != SIGNATURE_MAGIC:
            raise IntegrityError(f"{what}: not a replicator signature file")
        if words[1] != self.algorithm:
            raise IntegrityError(
                f"{what}: made with a {words[1]} key, {self.path} is a {self.algorithm} key"
            )
        try:
            signature = base64.b64decode(words[2], validate=True)
        except (binascii.Error, ValueError):
            raise IntegrityError(f"{what}: the signature is not base64") from None
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, data)
            else:
                self.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise IntegrityError(
                f"{what}: does not verify with {self.path} (signed by another key, or the "
                "document changed)"
            ) from None
