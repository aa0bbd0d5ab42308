"""OCI content descriptors and platforms."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from replicator.errors import InputError

_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_HEX = {"sha256": 64, "sha512": 128}
_MODELLED_KEYS = frozenset(
    {"mediaType", "digest", "size", "annotations", "artifactType", "platform", "urls"}
)


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed digest of a known algorithm, else raise.

    Only sha256 and sha512 are accepted: they are the ones the OCI spec registers.
    """
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        shown = repr(digest) if len(repr(digest)) <= 160 else repr(digest)[:159] + "…"
        raise InputError(f"invalid digest {shown}")
    alg, _, hexpart = digest.partition(":")
    want = _HEX.get(alg)
    if want is None:
        raise InputError(f"unsupported digest algorithm {alg[:40]!r}")
    if len(hexpart) != want or not re.fullmatch(r"[a-f0-9]+", hexpart):
        shown = digest if len(digest) <= 160 else digest[:159] + "…"
        raise InputError(f"invalid {alg} digest {shown!r}")
    return digest


@dataclass(frozen=True, slots=True)
class Platform:
    """A platform of an index entry (``os/architecture[/variant]``)."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch[/variant]`` as given on the command line."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InputError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Platform:
        """Build from the ``platform`` object of an index entry."""
        variant = data.get("variant")
        os_version = data.get("os.version")
        return cls(
            os=str(data.get("os", "")),
            architecture=str(data.get("architecture", "")),
            variant=variant if isinstance(variant, str) and variant else None,
            os_version=os_version if isinstance(os_version, str) and os_version else None,
        )

    def matches(self, other: Platform) -> bool:
        """True when ``other`` (a concrete platform) satisfies this requested one."""
        if self.os != other.os or self.architecture != other.architecture:
            return False
        return self.variant is None or self.variant == other.variant

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor: media type, digest and size, plus optional fields.

    ``raw`` keeps the descriptor's JSON object as it was read when it holds fields
    this class does not model, so that writing it into a new index (a fallback
    referrers index, an ``index.json``) keeps them; a descriptor of modelled
    fields only is written from its fields (a listing of thousands of referrers
    would otherwise hold each entry twice).  Descriptors are hashable (annotations and
    ``raw`` take no part in the hash), so they can be set members and dict keys.
    """

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] | None = field(default=None, hash=False)
    artifact_type: str | None = None
    platform: Platform | None = None
    urls: tuple[str, ...] | None = None
    raw: Mapping[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)

    @classmethod
    def from_json(cls, data: Any) -> Descriptor:
        """Parse a descriptor object; raise :class:`InputError` when it is malformed."""
        if not isinstance(data, Mapping):
            raise InputError("descriptor is not a JSON object")
        media_type = data.get("mediaType")
        digest = data.get("digest")
        size = data.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise InputError("descriptor has no mediaType")
        if not isinstance(digest, str):
            raise InputError("descriptor has no digest")
        validate_digest(digest)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError(f"descriptor {digest} has an invalid size")
        annotations = data.get("annotations")
        if annotations is not None and (
            not isinstance(annotations, Mapping)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())
        ):
            raise InputError(f"descriptor {digest} has invalid annotations")
        artifact_type = data.get("artifactType")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise InputError(f"descriptor {digest} has an invalid artifactType")
        platform_data = data.get("platform")
        platform = Platform.from_json(platform_data) if isinstance(platform_data, Mapping) else None
        urls = data.get("urls")
        return cls(
            # Interned: a listing of thousands of referrers repeats a few types.
            media_type=sys.intern(media_type),
            digest=digest,
            size=size,
            annotations=dict(annotations) if annotations else None,
            artifact_type=sys.intern(artifact_type) if artifact_type else artifact_type,
            platform=platform,
            urls=tuple(str(u) for u in urls) if isinstance(urls, list) else None,
            # Kept only when it says more than the fields (unmodelled keys).
            raw=dict(data) if not _MODELLED_KEYS.issuperset(data) else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The descriptor as a JSON object.

        When the descriptor was parsed (``raw`` is set) and its fields still say
        what ``raw`` says, ``raw`` is returned as read, unknown fields included.
        When fields were changed afterwards (``dataclasses.replace``), the fields
        win: they are serialised, and ``raw``'s unmodelled fields are kept only
        if the digest did not change.
        """
        if self.raw is None:
            return self._fields_json()
        try:
            unchanged = Descriptor.from_json(self.raw) == self
        except InputError:
            unchanged = False
        if unchanged:
            return dict(self.raw)
        out = self._fields_json()
        if self.raw.get("digest") == self.digest:
            for key, value in self.raw.items():
                if key not in _MODELLED_KEYS:
                    out[key] = value
        return out

    def _fields_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            plat: dict[str, Any] = {
                "architecture": self.platform.architecture,
                "os": self.platform.os,
            }
            if self.platform.variant:
                plat["variant"] = self.platform.variant
            if self.platform.os_version:
                plat["os.version"] = self.platform.os_version
            out["platform"] = plat
        if self.urls:
            out["urls"] = list(self.urls)
        return out

    @property
    def short(self) -> str:
        """The first 12 hex digits of the digest, as ORAS prints them."""
        return self.digest.split(":", 1)[-1][:12]

    @property
    def title(self) -> str | None:
        """The ``org.opencontainers.image.title`` annotation, if any."""
        if self.annotations:
            return self.annotations.get("org.opencontainers.image.title")
        return None
