"""Measuring whole commands: wall time, CPU seconds and peak RSS of a child process.

Each measured command runs as its own process; ``os.wait4`` gives that one
child's resource usage (``ru_maxrss`` in KiB on Linux, user + system CPU), so
replicator and skopeo are measured the same way in the same run.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = REPO_ROOT / ".venv" / "bin"
REPLICATOR = str(VENV_BIN / "replicator")


@dataclass
class Measurement:
    """One command's run."""

    label: str
    argv: list[str]
    wall_s: float
    cpu_s: float
    max_rss_mib: float
    returncode: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


class CommandFailed(RuntimeError):
    """A measured command exited non-zero."""


def measure(
    label: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
    check: bool = True,
) -> Measurement:
    """Run ``argv`` to completion and return its wall time, CPU time and peak RSS."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=out, env=full_env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    m = Measurement(
        label=label,
        argv=list(argv),
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_mib=usage.ru_maxrss / 1024.0,
        returncode=proc.returncode,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(f"{label}: exit {proc.returncode}: {shlex.join(argv)} (log: {log})")
    return m


def skopeo_available() -> bool:
    """True when Debian's skopeo is installed."""
    return Path("/usr/bin/skopeo").exists()
