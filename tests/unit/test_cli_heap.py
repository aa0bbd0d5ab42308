"""The console script's garbage-collector handling during start-up (replicator.cli.heap)."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import gc
from replicator.cli import heap

# Not deferred (a caller of main()): settle() leaves the collector alone.
gc.disable()
heap.settle()
assert not gc.isenabled() and gc.get_freeze_count() == 0
gc.enable()
heap.defer_settling()
assert not heap.unsettled()  # the collector was on: nothing to settle later
heap.settle()
assert gc.isenabled() and gc.get_freeze_count() == 0

# The console script's way: off for start-up, then frozen and back on, once.
gc.disable()
heap.defer_settling()
assert heap.unsettled()
import replicator.engine.copier  # start-up work
heap.settle()
assert gc.isenabled() and not heap.unsettled()
frozen = gc.get_freeze_count()
assert frozen > 10_000, frozen
heap.settle()
assert gc.get_freeze_count() == frozen
print("ok")
"""


def test_settle_freezes_start_up_once_and_only_when_deferred() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "ok"
