"""Measuring whole commands: wall time, CPU seconds and peak RSS of a child process.

Each measured command runs as its own process; ``os.wait4`` gives that one
child's resource usage (``ru_maxrss`` in KiB on Linux, user + system CPU), so
replicator and skopeo are measured the same way in the same run.

The command is started by a tiny launcher (``python -S``, about 10 MiB) rather
than by the benchmark process itself: on Linux a child's ``ru_maxrss`` keeps the
high-water mark of the memory image it had before ``exec``, i.e. a fork (or
vfork) of a benchmark process that holds hundreds of MiB would report that as
the command's peak RSS.  The launcher forks, execs the command, waits for it
with ``os.wait4`` and hands wall time, CPU and peak RSS back as JSON.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
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


#: Runs argv[1:] as a child and writes its wall time, rusage and exit code to argv[0].
_LAUNCHER = """
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(out, "w") as f:
    json.dump({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kib": ru.ru_maxrss,
               "rc": os.waitstatus_to_exitcode(status)}, f)
"""


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
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            result_path = tmp.name
        launcher = [sys.executable, "-S", "-c", _LAUNCHER, result_path, *argv]
        subprocess.run(launcher, stdout=out, stderr=out, env=full_env, cwd=cwd, check=False)
        with open(result_path) as f:
            res = json.load(f)
        os.unlink(result_path)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    m = Measurement(
        label=label,
        argv=list(argv),
        wall_s=res["wall"],
        cpu_s=res["cpu"],
        max_rss_mib=res["maxrss_kib"] / 1024.0,
        returncode=res["rc"],
    )
    if check and m.returncode != 0:
        raise CommandFailed(f"{label}: exit {m.returncode}: {shlex.join(argv)} (log: {log})")
    return m


def skopeo_available() -> bool:
    """True when Debian's skopeo is installed."""
    return Path("/usr/bin/skopeo").exists()
