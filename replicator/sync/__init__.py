"""replicator.sync: the run layer under the command line.

What a run is — its jobs, the selection of tags, the journal's run, the
graceful stop, the report — lives here, callable from Python without argparse:
build a :class:`RunRequest`, open a :class:`TargetPool`, ``await``
:func:`run_copy`, read the :class:`RunOutcome`.  ``replicator copy`` is a thin
front end over it (parse, call, format); a config-file front end supplies its
own job list and run definition to the same entry point.  docs/CLI.md, "From
Python", has a runnable example.
"""

from replicator.sync.jobs import (
    DestinationSpec,
    JobSpec,
    ReferenceJob,
    RepositoryJob,
    reference_job,
    repository_job,
)
from replicator.sync.journal_run import SourceMoved
from replicator.sync.outcome import JobState, Message, RunOutcome, RunStatus, write_report
from replicator.sync.request import JournalChoice, RunRequest, concurrency_limits, run_key
from replicator.sync.runner import run_copy
from replicator.sync.stop import StopRequest
from replicator.sync.targets import OptionsFor, TargetPool

__all__ = [
    "DestinationSpec",
    "JobSpec",
    "JobState",
    "JournalChoice",
    "Message",
    "OptionsFor",
    "ReferenceJob",
    "RepositoryJob",
    "RunOutcome",
    "RunRequest",
    "RunStatus",
    "SourceMoved",
    "StopRequest",
    "TargetPool",
    "concurrency_limits",
    "reference_job",
    "repository_job",
    "run_copy",
    "run_key",
    "write_report",
]
