"""The durable log of a bundle being created: what the parts hold, so a killed create resumes.

``DIR/.bundle-create.jsonl`` is a JSON-lines file, locked (``flock``) by the
one process writing the bundle.  Its first line is the create's *identity*
(bundle id, creation time, the key of what is being bundled, the part size,
the base); every other line records, in stream order, one fact made durable:

* ``{"member": {...}}`` — a manifest, blob or layout file written to the parts
  (digest, size, media type, its data spans, where the stream stood after it);
* ``{"repo": R, "manifest": D}`` — manifest ``D`` belongs to repository ``R``;
* ``{"tag": [R, T, D]}`` — tag ``T`` of ``R`` points at ``D``;
* ``{"part": [N, SIZE, SHA256]}`` — part ``N`` is complete;
* ``{"finalizing": [PART, OFFSET]}`` — the layout files began there;
* ``{"partial": {...}}`` — a large blob being streamed: where its header lies
  and the data spans fsynced so far (every :data:`~.appender.PROGRESS_EVERY`
  bytes); ``{"dropped": D}`` — that partial blob was given up.

Lines are written only after the part bytes they describe were fsynced, and
the log is fsynced before the writer confirms anything to the engine: what
the engine's journal records as present in the bundle is always in this log.
On resume the parts are cut back to the end of the last member the log
records — and to where finalizing began, when it had begun — except for a
large blob the log shows half written (``partial``): its bytes are kept, and
continued from where they end if that blob is the next one appended (the
bytes already there are hashed again; a mismatch writes it from its start).  The log is removed once
``bundle.json`` is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from replicator.bundle.model import Span
from replicator.errors import InputError, LayoutError

STATE_NAME = ".bundle-create.jsonl"

MemberKind = Literal["manifest", "blob", "layout"]


@dataclass(frozen=True, slots=True)
class Identity:
    """What makes a rerun the same create: the same key, part size and base."""

    id: str
    created: str
    mtime: int
    key: str
    max_part_size: int
    base: str | None

    def to_json(self) -> dict[str, Any]:
        """The identity line's payload."""
        return {
            "id": self.id,
            "created": self.created,
            "mtime": self.mtime,
            "key": self.key,
            "maxPartSize": self.max_part_size,
            "base": self.base,
        }

    def same_create(self, other: Identity) -> bool:
        """True when ``other`` describes the same create (id and time aside)."""
        return (self.key, self.max_part_size, self.base) == (
            other.key,
            other.max_part_size,
            other.base,
        )


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the tar stream as the log records it."""

    kind: MemberKind
    digest: str
    size: int
    spans: tuple[Span, ...]
    end: tuple[int, int]
    media_type: str = ""
    artifact_type: str | None = None
    subject: str | None = None
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The member line's payload."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "digest": self.digest,
            "size": self.size,
            "at": [s.to_json() for s in self.spans],
            "end": list(self.end),
        }
        for key, value in (
            ("mediaType", self.media_type),
            ("artifactType", self.artifact_type),
            ("subject", self.subject),
            ("path", self.path),
        ):
            if value:
                out[key] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Member:
        """Parse a member line's payload (the log is our own file; KeyError/TypeError if not)."""
        return cls(
            kind=data["kind"],
            digest=str(data["digest"]),
            size=int(data["size"]),
            spans=tuple(Span(int(p), int(o), int(n)) for p, o, n in data["at"]),
            end=(int(data["end"][0]), int(data["end"][1])),
            media_type=str(data.get("mediaType", "")),
            artifact_type=data.get("artifactType"),
            subject=data.get("subject"),
            path=data.get("path"),
        )


@dataclass(frozen=True, slots=True)
class Partial:
    """A large blob half written at a kill: its header's position and its data so far."""

    digest: str
    size: int
    media_type: str
    header: tuple[int, int]
    spans: tuple[Span, ...]

    @property
    def written(self) -> int:
        """Data bytes of the blob in the parts."""
        return sum(s.length for s in self.spans)

    def to_json(self) -> dict[str, Any]:
        """The partial line's payload."""
        return {
            "digest": self.digest,
            "size": self.size,
            "mediaType": self.media_type,
            "header": list(self.header),
            "at": [s.to_json() for s in self.spans],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Partial:
        """Parse a partial line's payload."""
        return cls(
            digest=str(data["digest"]),
            size=int(data["size"]),
            media_type=str(data.get("mediaType", "")),
            header=(int(data["header"][0]), int(data["header"][1])),
            spans=tuple(Span(int(p), int(o), int(n)) for p, o, n in data["at"]),
        )


@dataclass(slots=True)
class CreateState:
    """What the log says the parts hold (replayed on resume, kept current while writing)."""

    identity: Identity
    members: dict[str, Member] = field(default_factory=dict)
    layout: dict[str, Member] = field(default_factory=dict)
    repo_manifests: dict[str, set[str]] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    end: tuple[int, int] = (0, 0)
    parts_done: dict[int, tuple[int, str]] = field(default_factory=dict)
    finalizing: tuple[int, int] | None = None
    partial: Partial | None = None

    def apply(self, record: dict[str, Any]) -> None:
        """Apply one log line."""
        if "member" in record:
            member = Member.from_json(record["member"])
            if member.kind == "layout" and member.path is not None:
                self.layout[member.path] = member
            else:
                self.members[member.digest] = member
            self.end = member.end
            self.partial = None
        elif "partial" in record:
            self.partial = Partial.from_json(record["partial"])
        elif "dropped" in record:
            self.partial = None
        elif "repo" in record:
            self.repo_manifests.setdefault(record["repo"], set()).add(record["manifest"])
        elif "tag" in record:
            repo, tag, digest = record["tag"]
            self.tags.setdefault(repo, {})[tag] = digest
        elif "part" in record:
            index, size, sha = record["part"]
            self.parts_done[int(index)] = (int(size), str(sha))
        elif "finalizing" in record:
            part, offset = record["finalizing"]
            self.finalizing = (int(part), int(offset))

    def cut_finalizing(self) -> None:
        """Forget the layout files a finalize that did not end had written."""
        if self.finalizing is None:
            return
        cut = self.finalizing
        self.layout = {p: m for p, m in self.layout.items() if m.end <= cut}
        self.members = {d: m for d, m in self.members.items() if m.end <= cut}
        self.parts_done = {i: v for i, v in self.parts_done.items() if i < cut[0]}
        self.end = cut
        self.finalizing = None
        self.partial = None


class StateLog:
    """The locked log file of one create (see the module doc)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def open(cls, path: Path) -> StateLog:
        """Open (or create) and lock the log; :class:`InputError` when another process holds it."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise LayoutError(f"cannot open {path} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError(
                f"{path.parent} is being written by another bundle create (its log is locked)"
            ) from None
        return cls(path, fd)

    def read(self) -> list[dict[str, Any]]:
        """Every complete line; a torn last line (a kill mid-write) is cut off the file."""
        size = os.fstat(self._fd).st_size
        data = os.pread(self._fd, size, 0)
        records: list[dict[str, Any]] = []
        good = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except ValueError:
                break
            if not isinstance(record, dict):
                break
            records.append(record)
            good += len(line)
        if good != size:
            os.ftruncate(self._fd, good)
        return records

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write ``records`` and fsync (blocking)."""
        if not records:
            return
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        os.write(self._fd, text.encode())
        os.fsync(self._fd)

    def reset(self) -> None:
        """Empty the log (a fresh start)."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)

    def remove(self) -> None:
        """Delete the log and release the lock (the bundle is complete)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.close()

    def close(self) -> None:
        """Release the lock (the log stays for a resume)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def replay(identity: Identity, records: list[dict[str, Any]]) -> CreateState:
    """The state the log's ``records`` describe (after the identity line)."""
    state = CreateState(identity)
    for record in records:
        state.apply(record)
    state.cut_finalizing()
    return state


def identity_of(record: dict[str, Any]) -> Identity | None:
    """The identity in a log's first line, if it is one."""
    data = record.get("identity")
    if not isinstance(data, dict):
        return None
    try:
        return Identity(
            id=str(data["id"]),
            created=str(data["created"]),
            mtime=int(data["mtime"]),
            key=str(data["key"]),
            max_part_size=int(data["maxPartSize"]),
            base=data.get("base"),
        )
    except (KeyError, TypeError, ValueError):
        return None
