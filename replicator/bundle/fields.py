"""Typed reads of untrusted JSON: each malformed field an IntegrityError naming it.

Bundle documents and receipts arrive from the other side of an air gap; every
value read from them goes through :class:`JsonFields`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from replicator.errors import InputError, IntegrityError
from replicator.oci.descriptor import validate_digest
from replicator.oci.reference import MAX_REPOSITORY_LENGTH, REPOSITORY_RE, TAG_RE


class JsonFields:
    """Typed reads of untrusted JSON, each failure an IntegrityError naming the field."""

    def __init__(self, document: str) -> None:
        self.document = document

    def bad(self, where: str, why: str) -> IntegrityError:
        """The error for a malformed field."""
        at = f"{self.document}: {where}" if where else self.document
        return IntegrityError(f"{at}: {why}")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        """``value`` as a JSON object."""
        if not isinstance(value, dict):
            raise self.bad(where, "is not a JSON object")
        return value

    def sequence(self, value: Any, where: str) -> list[Any]:
        """``value`` as a JSON array."""
        if not isinstance(value, list):
            raise self.bad(where, "is not a JSON array")
        return value

    def text(self, value: Any, where: str) -> str:
        """``value`` as a non-empty string."""
        if not isinstance(value, str) or not value:
            raise self.bad(where, "is not a non-empty string")
        return value

    def optional_text(self, value: Any, where: str) -> str | None:
        """``value`` as a string, or None when absent."""
        return None if value is None else self.text(value, where)

    def count(self, value: Any, where: str) -> int:
        """``value`` as an integer >= 0."""
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.bad(where, "is not an integer >= 0")
        return value

    def digest(self, value: Any, where: str) -> str:
        """``value`` as a valid digest."""
        if not isinstance(value, str):
            raise self.bad(where, "is not a digest")
        try:
            return validate_digest(value)
        except InputError as exc:
            raise self.bad(where, exc.message) from None

    def digests(self, value: Any, where: str) -> Iterable[str]:
        """``value`` as a list of digests."""
        return [self.digest(d, where) for d in self.sequence(value, where)]

    def tag(self, value: str, where: str) -> str:
        """``value`` as a valid tag."""
        if not TAG_RE.fullmatch(value):
            raise self.bad(where, f"invalid tag {value!r}")
        return value

    def repository(self, value: str) -> str:
        """``value`` as a valid repository name."""
        if len(value) > MAX_REPOSITORY_LENGTH or not REPOSITORY_RE.fullmatch(value):
            raise self.bad("repositories", f"invalid repository name {value!r}")
        return value
