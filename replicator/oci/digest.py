"""Digests: computing them and verifying streams against them."""

from __future__ import annotations

import hashlib
from typing import Any

from replicator.errors import IntegrityError
from replicator.oci.descriptor import Descriptor, validate_digest


def _hasher(algorithm: str) -> Any:
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "sha512":
        return hashlib.sha512()
    raise IntegrityError(f"unsupported digest algorithm {algorithm!r}")


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    """The ``alg:hex`` digest of ``data``."""
    h = _hasher(algorithm)
    h.update(data)
    return f"{algorithm}:{h.hexdigest()}"


def descriptor_for(data: bytes, media_type: str, **extra: Any) -> Descriptor:
    """A descriptor (sha256) for in-memory content."""
    return Descriptor(media_type=media_type, digest=digest_bytes(data), size=len(data), **extra)


class DigestVerifier:
    """Hashes a stream chunk by chunk and checks it against an expected digest and size.

    ``update`` raises as soon as more bytes arrive than ``size`` allows, so a
    hostile server cannot make us buffer or write past the declared size.
    """

    __slots__ = ("_h", "_want_hex", "algorithm", "digest", "seen", "size")

    def __init__(self, digest: str, size: int | None = None) -> None:
        validate_digest(digest)
        self.digest = digest
        self.algorithm, _, self._want_hex = digest.partition(":")
        self.size = size
        self.seen = 0
        self._h = _hasher(self.algorithm)

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Feed the next chunk of the stream."""
        self.seen += len(chunk)
        if self.size is not None and self.seen > self.size:
            raise IntegrityError(
                f"{self.digest}: received more than the declared {self.size} bytes"
            )
        self._h.update(chunk)

    def copy(self) -> DigestVerifier:
        """An independent verifier in the same state (the bytes fed so far, hashed)."""
        twin = DigestVerifier.__new__(DigestVerifier)
        twin.digest, twin.algorithm, twin._want_hex = self.digest, self.algorithm, self._want_hex
        twin.size, twin.seen = self.size, self.seen
        twin._h = self._h.copy()
        return twin

    @property
    def current(self) -> str:
        """The digest of what was fed so far."""
        return f"{self.algorithm}:{self._h.hexdigest()}"

    def verify(self) -> None:
        """Raise :class:`IntegrityError` unless the stream matched digest and size."""
        if self.size is not None and self.seen != self.size:
            raise IntegrityError(
                f"{self.digest}: size mismatch, expected {self.size} bytes, got {self.seen}"
            )
        got = self._h.hexdigest()
        if got != self._want_hex:
            raise IntegrityError(
                f"digest mismatch: expected {self.digest}, got {self.algorithm}:{got}"
            )


def verify_bytes(data: bytes, digest: str, size: int | None = None) -> None:
    """Check in-memory content against a digest (and size)."""
    v = DigestVerifier(digest, size)
    v.update(data)
    v.verify()
