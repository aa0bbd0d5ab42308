"""Sharding a config's source repositories over N processes: ``--shard I/N``.

A sync (or verify) run with a :class:`Shard` handles only the source
repositories that belong to it; N processes with the shards ``0/N`` ..
``N-1/N`` together handle every repository exactly once, with nothing in
common but the registries (docs/SCALING.md).

**Which shard owns a repository** (:func:`shard_of`): the SHA-256 of the UTF-8
bytes of the repository's name (:func:`shard_name`), whose first 8 bytes, read
as a big-endian unsigned integer, are taken modulo N.  The name is the source
repository's normalised path — ``team/api``, ``library/alpine`` for Docker
Hub's ``alpine`` — without the registry host, so moving a registry to another
host or port does not reshuffle the shards; an OCI layout source, which has no
repository path, is named by its ``ocidir://`` path.  The result depends on the
name and N only: the same on every machine and Python version (no ``hash()``,
no salt), so every pod of an Indexed Job agrees on the split without talking to
the others.  Changing N moves most repositories to another shard.

**Each shard is its own run**: its run key includes ``I/N``
(:meth:`Shard.definition`), and its journal is its own file — the journal path
the run would use otherwise, with ``.shard-I-of-N`` before the suffix
(:meth:`Shard.journal_path`): ``journal.sqlite`` becomes
``journal.shard-1-of-3.sqlite``, so shards sharing a state directory (a common
volume, or three local processes with the default journal) never share a
journal file, its lock, or a run.  Anything else a shard keeps on disk
(a lock file, a metrics file) should carry :attr:`Shard.suffix` the same way.

Front ends: ``replicator sync`` and ``replicator verify`` take ``--shard I/N``
or ``--shard-from-env N`` (the index from ``JOB_COMPLETION_INDEX``, which
Kubernetes sets in every pod of an Indexed Job): see
:func:`replicator.cli.cmd_sync.add_shard_flags`.  A further command that
expands a config (``bundle create``) gets the same flags from there and passes
the shard to :func:`replicator.sync.expand.expand`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from replicator.errors import UsageError
from replicator.journal.store import default_journal_path
from replicator.oci.reference import Reference
from replicator.sync.request import JournalChoice

#: The environment variable Kubernetes sets to a pod's index in an Indexed Job.
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"

_SHARD_TEXT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")

T = TypeVar("T")


def shard_of(name: str, count: int) -> int:
    """The shard (0 .. ``count``-1) that owns the repository ``name`` (see the module doc)."""
    if count < 1:
        raise ValueError(f"a shard count must be at least 1 (got {count})")
    head = hashlib.sha256(name.encode("utf-8")).digest()[:8]
    return int.from_bytes(head, "big") % count


def shard_name(source: Reference) -> str:
    """The name a source repository is sharded by: its path, or an OCI layout's ``ocidir://`` path."""
    return source.repository or str(source)


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count); :class:`UsageError` otherwise."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise UsageError(f"shard {self.index}/{self.count}: the count must be at least 1")
        if not 0 <= self.index < self.count:
            raise UsageError(
                f"shard {self.index}/{self.count}: the index must be from 0 to {self.count - 1}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N`` as a shard; :class:`UsageError` for anything else."""
        match = _SHARD_TEXT.match(text)
        if match is None:
            raise UsageError(f"{text!r} is not a shard: write I/N, such as 0/3 (0 <= I < N)")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def from_environment(
        cls, count: int, environ: Mapping[str, str], variable: str = INDEX_VARIABLE
    ) -> Shard:
        """Shard ``$variable`` of ``count``, as a pod of an Indexed Job of ``count`` completions.

        :class:`UsageError` when the variable is unset, not a number, or not
        below ``count`` (the Job's ``completions`` and N disagree).
        """
        raw = environ.get(variable)
        if raw is None or not raw.strip():
            raise UsageError(
                f"--shard-from-env {count}: {variable} is not set "
                "(Kubernetes sets it in the pods of an Indexed Job)"
            )
        if not raw.strip().isdigit():
            raise UsageError(f"--shard-from-env {count}: {variable}={raw!r} is not an index")
        index = int(raw)
        if index >= count:
            raise UsageError(
                f"--shard-from-env {count}: {variable}={index} is not below {count}: "
                "the Job's completions must equal the shard count"
            )
        return cls(index, count)

    @property
    def label(self) -> str:
        """``I/N``."""
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        """``shard-I-of-N``: what names the shard's own files."""
        return f"shard-{self.index}-of-{self.count}"

    def owns(self, name: str) -> bool:
        """True when the source repository ``name`` belongs to this shard."""
        return shard_of(name, self.count) == self.index

    def split(self, items: Iterable[T], name: Callable[[T], str]) -> tuple[list[T], list[T]]:
        """``(mine, others)``: the items whose ``name`` this shard owns, and the rest, in order."""
        mine: list[T] = []
        others: list[T] = []
        for item in items:
            (mine if self.owns(name(item)) else others).append(item)
        return mine, others

    def journal_path(self, path: Path) -> Path:
        """``path`` with ``.shard-I-of-N`` before its suffix (``j.sqlite`` -> ``j.shard-0-of-3.sqlite``)."""
        if path.suffix:
            return path.with_name(f"{path.stem}.{self.suffix}{path.suffix}")
        return path.with_name(f"{path.name}.{self.suffix}")

    def journal(self, choice: JournalChoice) -> JournalChoice:
        """The shard's journal: the chosen (or default) path made the shard's own; off stays off."""
        if not choice.enabled:
            return choice
        return replace(choice, path=self.journal_path(choice.path or default_journal_path()))

    def definition(self) -> str:
        """What the shard adds to its run's key: ``I/N``."""
        return self.label

    def to_json(self, mine: int, others: int) -> dict[str, Any]:
        """The report's ``shard`` section: which shard, how many repositories here and elsewhere."""
        return {
            "index": self.index,
            "count": self.count,
            "label": self.label,
            "repositories": mine,
            "other_shards": others,
        }
