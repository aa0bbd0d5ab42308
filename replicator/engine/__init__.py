"""The graph copy engine: discovery, planning, transfer and commit, pipelined.

Start with :class:`~replicator.engine.copier.CopyEngine` (see ``copier.py``);
``ledger.py`` is the journal seam, ``limits.py`` the adaptive concurrency,
``transfer.py`` the fan-out of blob bytes, ``report.py`` the run summary.
"""

from replicator.engine.copier import (
    CopyEngine,
    CopyJob,
    CopyOptions,
    Destination,
    Endpoint,
    raise_for_report,
)
from replicator.engine.ledger import Confirmation, Ledger, MemoryLedger
from replicator.engine.limits import Limits, LimitSettings
from replicator.engine.report import CopyReport, JobResult

__all__ = [
    "Confirmation",
    "CopyEngine",
    "CopyJob",
    "CopyOptions",
    "CopyReport",
    "Destination",
    "Endpoint",
    "JobResult",
    "Ledger",
    "LimitSettings",
    "Limits",
    "MemoryLedger",
    "raise_for_report",
]
