"""The garbage collector during start-up (see :mod:`replicator.cli`).

The console script turns the collector off before importing the command and
calls :func:`defer_settling`; the command calls :func:`settle` once its start-up
is over (``copy`` right before the engine runs, every other command before its
handler).  :func:`settle` freezes what start-up built into the permanent
generation and turns the collector back on.  Code that calls
:func:`replicator.cli.main.main` directly keeps its collector as it was.

The few cycles start-up leaves behind (about 1 600 objects, 0.4 MB, measured
after importing everything ``copy`` needs) are frozen with the rest and never
collected: a deliberate trade.  Work that talks to registries and can produce
garbage in proportion to its size settles first (``copy --all-tags`` before
listing tags).
"""

from __future__ import annotations

import gc

import structlog

_log = structlog.get_logger("replicator.cli")
_unsettled = False


def defer_settling() -> None:
    """Remember that the collector was turned off for start-up."""
    global _unsettled
    _unsettled = not gc.isenabled()


def settle() -> None:
    """Start-up is over: freeze the objects it built and turn the collector back on."""
    global _unsettled
    if _unsettled:
        _unsettled = False
        gc.freeze()
        gc.enable()
        _log.debug("startup.heap_settled", frozen_objects=gc.get_freeze_count())


def unsettled() -> bool:
    """Whether start-up still runs with the collector off (for tests)."""
    return _unsettled
