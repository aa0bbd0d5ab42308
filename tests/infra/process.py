"""Child processes for the test infrastructure: start, wait until ready, stop.

Every server the tests talk to (docker-registry, the token server, the referrers
shim) runs as its own process on a free loopback port.  This module guarantees:

* the child's output goes to a log file (never to the test's terminal), and the
  tail of that log is part of every start-up failure message;
* the child dies with the test process (``setpriv --pdeathsig`` on Linux, plus an
  ``atexit`` hook), so no server outlives a crashed or interrupted test run;
* :meth:`ManagedProcess.stop` terminates, waits, then kills if needed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

#: The repository root (``tests/infra/process.py`` → two levels up).
REPO_ROOT = Path(__file__).resolve().parents[2]

_live: set[ManagedProcess] = set()
_live_lock = threading.Lock()


class StartupError(RuntimeError):
    """A test server did not come up; the message holds its log tail."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (or a note that it is missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _with_parent_death_signal(argv: list[str]) -> list[str]:
    """Prefix argv so the child gets SIGTERM when this process dies.

    Uses util-linux ``setpriv --pdeathsig`` (no ``preexec_fn``, which is unsafe
    with threads).  The signal follows the *thread* that started the child, so
    it is only requested from the main thread; the ``atexit`` hook covers the rest.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return argv
    return [setpriv, "--pdeathsig", "SIGTERM", "--", *argv]


class ManagedProcess:
    """One child process whose output goes to ``log_path``.

    ``ready_url`` is polled until it answers any HTTP status in ``ready_statuses``;
    :meth:`start` raises :class:`StartupError` (with the log tail) if the process
    exits or the time-out passes first.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready_url: str,
        ready_statuses: Sequence[int] = (200, 401),
        ssl_context: ssl.SSLContext | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.ready_url = ready_url
        self.ready_statuses = tuple(ready_statuses)
        self.ssl_context = ssl_context
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 60.0) -> None:
        """Start the child and block until it is ready (or raise StartupError)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                _with_parent_death_signal(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=str(self.cwd) if self.cwd else None,
            )
        with _live_lock:
            _live.add(self)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        delay = 0.02
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise StartupError(
                    f"{self.name} exited with code {code} during start-up "
                    f"({' '.join(self.argv)}); log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            status = self._probe()
            if isinstance(status, int) and status in self.ready_statuses:
                return
            last_error = str(status)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        raise StartupError(
            f"{self.name} did not answer {self.ready_url} within {timeout:.0f}s "
            f"(last: {last_error}); log {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def _probe(self) -> int | str:
        try:
            with urllib.request.urlopen(
                self.ready_url, timeout=2.0, context=self.ssl_context
            ) as resp:
                status: int = resp.status
                return status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def alive(self) -> bool:
        """True while the child runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the child and reap it (a crash rather than a clean stop)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        with _live_lock:
            _live.discard(self)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the child, kill it if it does not exit in ``timeout`` seconds."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        with _live_lock:
            _live.discard(self)

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid})"


def _stop_all() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.stop(timeout=5.0)


atexit.register(_stop_all)


def python_module_argv(module: str, *args: str) -> list[str]:
    """argv that runs ``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def child_env() -> dict[str, str]:
    """Environment for Python children: the repo root importable, unbuffered output."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env
