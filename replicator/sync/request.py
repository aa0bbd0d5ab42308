"""What a run is asked to do: :class:`RunRequest`, and the key that names *the same run*.

A request carries the jobs (parsed references), how to copy (the engine's
:class:`~replicator.engine.CopyOptions`, the :class:`~replicator.engine.LimitSettings`),
the journal choice, what the journal may record of the command, and where to
write the JSON report.  It is plain data: building one needs no argparse and
no network.

The run key (docs/RESUME.md) is the SHA-256 of what defines the run:

* the jobs, in order, normalised (:func:`~replicator.sync.jobs.job_key`) — or,
  when the front end supplies :attr:`RunRequest.definition`, that instead (a
  config-file front end names its run by its normalised job definitions, not by
  the tags they expanded to this time);
* every option that changes *what is selected*: referrers followed or not,
  artifact-type includes and excludes, the referrer depth, the platforms.

How the copy runs (concurrency, chunk size, keep-going, deep check, the report,
credentials, TLS) never changes the key.  For the jobs ``copy`` builds, the key
is byte for byte the one earlier releases computed, so their unfinished runs
resume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicator.engine import CopyOptions, LimitSettings
from replicator.graph.filters import GraphFilter
from replicator.sync.jobs import JobSpec, RepositoryJob, job_key


@dataclass(frozen=True, slots=True)
class JournalChoice:
    """Which journal a run keeps.

    ``enabled`` false: no journal, no resume.  ``path`` None: the default
    journal (``$XDG_STATE_HOME/replicator/journal.sqlite``).  ``fresh``: an
    unfinished run with the same key is abandoned and a new one starts.
    ``wait_lock``: how long to wait, in seconds, when another process runs the
    same run on this journal (None: as long as it takes; 0: not at all, the
    run ends with :class:`~replicator.errors.LockedError`, exit 11;
    :mod:`replicator.sync.locks`).
    """

    path: Path | None = None
    enabled: bool = True
    fresh: bool = False
    wait_lock: float | None = 0.0

    @classmethod
    def off(cls) -> JournalChoice:
        """No journal: the run cannot be resumed and the destinations are asked about everything."""
        return cls(enabled=False)

    @classmethod
    def at(
        cls, path: Path | str, *, fresh: bool = False, wait_lock: float | None = 0.0
    ) -> JournalChoice:
        """The journal at ``path``."""
        return cls(path=Path(path).expanduser(), fresh=fresh, wait_lock=wait_lock)


def concurrency_limits(concurrency: int) -> LimitSettings:
    """The limits of ``copy --concurrency N``: a global cap of N, per-location starts within it."""
    return LimitSettings(
        concurrency=concurrency,
        meta_per_location=min(16, concurrency),
        blob_per_location=min(8, concurrency),
    )


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One run: jobs, options, limits, journal, the command record and the report path.

    ``command`` is what the journal keeps to show the run later (``journal
    list``): the front end's own description, built from what it parsed — never
    credentials.  ``definition``, when set, is a JSON-ready value that replaces
    the job list in the run key (see the module doc).  ``report_path``: where the
    JSON report is written, whatever ends the run.
    """

    jobs: tuple[JobSpec, ...]
    options: CopyOptions = field(default_factory=CopyOptions)
    limits: LimitSettings = field(default_factory=LimitSettings)
    journal: JournalChoice = field(default_factory=JournalChoice)
    command: tuple[str, ...] = ()
    definition: Any = None
    report_path: Path | None = None

    def key(self) -> str:
        """The run key (see the module doc)."""
        return run_key(self.jobs, self.options.filter, definition=self.definition)


def run_key(jobs: tuple[JobSpec, ...], selection: GraphFilter, *, definition: Any = None) -> str:
    """SHA-256 of the run's definition and its selecting options, as ``sha256:<hex>``."""
    described: dict[str, Any] = {
        "referrers": selection.referrers,
        "artifact_types": sorted(selection.include_types),
        "exclude_artifact_types": sorted(selection.exclude_types),
        "depth": selection.max_depth,
        "platforms": sorted(str(p) for p in selection.platforms),
    }
    if definition is not None:
        described["definition"] = definition
    else:
        described["pairs"] = [job_key(job) for job in jobs]
        described["all_tags"] = bool(jobs) and all(isinstance(j, RepositoryJob) for j in jobs)
    text = json.dumps(described, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
