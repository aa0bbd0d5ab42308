"""Audit: what a destination lacks of a graph, read from a dry run's plan.

``verify`` is a dry run (``CopyOptions.plan``) that asks the destinations about
every manifest (``deep_check``) — and with ``--deep`` about every blob of the
manifests they hold (``check_blobs``) — with the same graph rules, filters and
referrer admission as a copy.  Everything such a run would write is something
a destination lacks; :func:`differences` names each:

* ``tag-missing`` / ``tag-moved`` — a destination tag absent, or pointing at
  another digest than the source's;
* ``manifest-missing`` / ``referrer-missing`` — a manifest of the graph (an
  index child or the root; a referrer) absent there;
* ``blob-missing`` — a blob of a manifest the destination holds, gone (only
  asked with ``check_blobs``; blobs of missing manifests are not listed apart);
* ``index-entry-missing`` — a referrer present there but missing from its
  subject's referrers index (a fallback tag), so tools cannot discover it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from replicator.engine.report import CopyReport

DifferenceKind = Literal[
    "tag-missing",
    "tag-moved",
    "manifest-missing",
    "referrer-missing",
    "blob-missing",
    "index-entry-missing",
]


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing a destination lacks: what, where, which digest, and a detail."""

    kind: DifferenceKind
    destination: str
    digest: str
    detail: str = ""

    def describe(self) -> str:
        """One line for the user."""
        return f"{self.kind}: {self.destination} {self.digest}" + (
            f" ({self.detail})" if self.detail else ""
        )


def differences(report: CopyReport) -> list[Difference]:
    """The differences a dry run's planned writes reveal (see the module doc), in order."""
    out: list[Difference] = []
    for p in report.planned:
        if p.action == "tag":
            if p.detail is None:
                out.append(Difference("tag-missing", p.destination, p.digest, f"tag {p.tag}"))
            else:
                detail = f"tag {p.tag} points at {p.detail}"
                out.append(Difference("tag-moved", p.destination, p.digest, detail))
        elif p.action == "push":
            kind: DifferenceKind = (
                "referrer-missing" if p.detail == "referrer" else "manifest-missing"
            )
            out.append(Difference(kind, p.destination, p.digest, p.detail or ""))
        elif p.action in ("upload", "mount") and p.detail == "lost":
            out.append(Difference("blob-missing", p.destination, p.digest, f"{p.size} bytes"))
        elif p.action == "index":
            for digest in (p.detail or "").split(","):
                if digest:
                    detail = f"not listed among the referrers of {p.digest}"
                    out.append(Difference("index-entry-missing", p.destination, digest, detail))
    return out
