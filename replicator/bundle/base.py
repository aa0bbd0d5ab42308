"""Receipts, and the base of an incremental bundle.

A **receipt** is what ``bundle import`` writes once its destination confirmed
everything: the destination, the bundle it imported (id, content digest), and
the content list the destination now holds — the bundle's content on top of
what its base promised (whose parts this bundle relied on were checked at the
destination before the import).  It is cumulative, so the next bundle is built
against the *last* receipt: a bundle lost in transit is recovered by building
the next one against the same receipt, with nothing to undo.

A **base** (``bundle create --base FILE``) is a receipt, or the ``bundle.json``
of an earlier bundle (then what that bundle promises: its content on top of
its own base's).  Either way the base is checked before use: its format, its
content digest, and its signature when a key is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replicator.bundle.documents import load_json, parse_bundle_document, read_document
from replicator.bundle.model import (
    BUNDLE_FORMAT,
    FORMAT_VERSION,
    RECEIPT_FORMAT,
    BaseRecord,
    Content,
    canonical_digest,
    render_json,
)
from replicator.bundle.signing import SigningKey, VerifyKey
from replicator.errors import IntegrityError
from replicator.targets.ocilayout.files import write_atomically


@dataclass(slots=True)
class Receipt:
    """A receipt (see the module doc)."""

    tool: str
    imported: str
    destination: str
    bundle_id: str
    bundle_digest: str
    content: Content
    content_digest: str = ""

    def to_json(self) -> dict[str, Any]:
        """The receipt as JSON, ``contentDigest`` computed and set (also on ``self``)."""
        out: dict[str, Any] = {
            "format": RECEIPT_FORMAT,
            "formatVersion": FORMAT_VERSION,
            "tool": self.tool,
            "imported": self.imported,
            "destination": self.destination,
            "bundle": {"id": self.bundle_id, "contentDigest": self.bundle_digest},
            "content": self.content.to_json(),
        }
        self.content_digest = canonical_digest(out)
        out["contentDigest"] = self.content_digest
        return out

    def render(self) -> bytes:
        """The receipt file's bytes."""
        return render_json(self.to_json())


def parse_receipt(raw: bytes, what: str = "receipt") -> tuple[Receipt, str]:
    """A receipt parsed, and the content digest its bytes actually have."""
    data = load_json(raw, what)
    if not isinstance(data, dict) or data.get("format") != RECEIPT_FORMAT:
        raise IntegrityError(f"{what}: not a replicator receipt")
    if data.get("formatVersion") != FORMAT_VERSION:
        raise IntegrityError(
            f"{what}: formatVersion {data.get('formatVersion')!r} is not supported"
        )
    bundle = data.get("bundle")
    fields = [data.get(k) for k in ("tool", "imported", "destination", "contentDigest")]
    if not isinstance(bundle, dict) or not all(isinstance(f, str) for f in fields):
        raise IntegrityError(
            f"{what}: incomplete (tool, imported, destination, bundle, contentDigest)"
        )
    receipt = Receipt(
        tool=data["tool"],
        imported=data["imported"],
        destination=data["destination"],
        bundle_id=str(bundle.get("id", "")),
        bundle_digest=str(bundle.get("contentDigest", "")),
        content=Content.from_json(data.get("content", {}), what),
        content_digest=data["contentDigest"],
    )
    return receipt, canonical_digest(data)


def write_receipt(path: Path, receipt: Receipt, key: SigningKey | None) -> None:
    """Write the receipt (and ``PATH.sig`` with a key), each atomically (blocking)."""
    raw = receipt.render()
    if key is not None:
        write_atomically(path.with_name(path.name + ".sig"), key.sign(raw))
    write_atomically(path, raw)


def load_base(path: Path, key: VerifyKey | None) -> BaseRecord:
    """The base in ``path`` (a receipt or a ``bundle.json``), checked (see the module doc)."""
    path = path.expanduser()
    what = f"base {path}"
    raw = read_document(path, what)
    if key is not None:
        signature = path.with_name(path.name + ".sig")
        key.check(raw, read_document(signature, f"{what}: signature"), f"{signature}")
    data = load_json(raw, what)
    kind = data.get("format") if isinstance(data, dict) else None
    if kind == RECEIPT_FORMAT:
        receipt, digest = parse_receipt(raw, what)
        _check_digest(what, receipt.content_digest, digest)
        return BaseRecord("receipt", digest, receipt.content, destination=receipt.destination)
    if kind == BUNDLE_FORMAT:
        document, digest = parse_bundle_document(raw)
        _check_digest(what, document.content_digest, digest)
        return BaseRecord("bundle", digest, document.promised())
    raise IntegrityError(f"{what}: neither a receipt nor a bundle.json")


def _check_digest(what: str, stated: str, actual: str) -> None:
    if stated != actual:
        raise IntegrityError(
            f"{what}: its content does not match its contentDigest (edited after it was written)"
        )
