"""``--wait-lock [SECONDS]``: wait for another process's run instead of ending with exit 11.

``copy`` and ``sync`` take a lock beside the journal before they run
(:mod:`replicator.sync.locks`).  Without the flag a taken lock ends the command
at once (exit 11, naming the process that holds it); ``--wait-lock`` waits as
long as it takes, ``--wait-lock=SECONDS`` (or ``--wait-lock SECONDS``) at most
that long.
"""

from __future__ import annotations

import argparse
import math

#: The value ``--wait-lock`` alone stands for: wait as long as it takes.
FOREVER = math.inf


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds (write --wait-lock=SECONDS, "
            "or put --wait-lock after the other arguments)"
        ) from None
    if not value >= 0 or value == math.inf:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return value


def add_wait_lock_flag(p: argparse.ArgumentParser, what: str) -> None:
    """Add ``--wait-lock [SECONDS]`` to ``p``; ``what`` says what is waited for."""
    p.add_argument(
        "--wait-lock",
        nargs="?",
        type=_seconds,
        const=FOREVER,
        default=0.0,
        metavar="SECONDS",
        help=(
            f"when another process is running {what} on the same journal, wait for it "
            "(at most SECONDS) instead of ending with exit 11"
        ),
    )


def wait_lock(args: argparse.Namespace) -> float | None:
    """The wait the command line asks for: seconds, or None for as long as it takes."""
    value = float(getattr(args, "wait_lock", 0.0) or 0.0)
    return None if value == FOREVER else value
