"""Carry out one fault schedule against real registries and check what it left.

:func:`run_schedule` builds the schedule's graphs at its source registry, puts
a :class:`~tests.infra.proxy.FaultProxy` in front of the source and of a
registry destination, arms the faults, runs the command (the real console
script, as a child process, with a journal), then checks:

* the run completed with every copied tag at the destination naming a graph
  equal to the source's — or it failed with one clear ``Error:`` line and a
  documented exit code, and every destination tag it left names a complete,
  equal graph (never a tag on an incomplete or corrupt graph);
* no traceback (no run uses ``--debug``), no password or token in stdout,
  stderr or the journal;
* a redirect to another host reached it without credentials;
* where the run failed: the same command again, faults cleared, with the same
  journal, completes and passes the same checks.

It returns an :class:`Outcome` holding every finding; the caller asserts there
is none.
"""

from __future__ import annotations

import base64
import json
import random
import secrets as pysecrets
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from replicator.oci.descriptor import Descriptor
from replicator.targets.base import Target
from replicator.targets.ocilayout import OCILayoutTarget
from replicator.targets.registry import RegistryTarget
from tests.faults.checks import (
    FAILURE_CODES,
    cli_findings,
    destination_findings,
    every_tag_findings,
    journal_texts,
    layout_findings,
    secret_findings,
)
from tests.faults.schedule import READ_TIMEOUT, RETRY_DEADLINE, FaultSpec, Schedule
from tests.faults.world import SeededGraphs
from tests.infra.proxy import FaultProxy, FaultRule
from tests.infra.registry import RegistryInstance, RunningRegistry
from tests.integration.cli_helpers import REPLICATOR, CliResult, isolated_env

#: Longest a faulted run may take before it counts as hung (seconds).
RUN_TIMEOUT = 240
ProxyFactory = Callable[..., FaultProxy]


@dataclass
class Outcome:
    """What one schedule did: exit codes, the first error, time, and every finding."""

    schedule: Schedule
    first_code: int = -1
    first_error: str = ""
    rerun_code: int | None = None
    seconds: float = 0.0
    #: How often each fault fired in the first run (schedule order).
    fired: list[int] = field(default_factory=list)
    #: Upload sessions the destination registry still holds at the end (not a
    #: finding: distribution 2.8 cannot delete a session it invalidated).
    leftover_sessions: int = 0
    findings: list[str] = field(default_factory=list)
    #: The known product bug that explains every finding (set by the test).
    known_bug: str | None = None

    @property
    def status(self) -> str:
        """``completed``, ``failed, rerun completed``, ``known bug`` or ``FINDINGS``."""
        if self.findings:
            return "known bug" if self.known_bug else "FINDINGS"
        return "completed" if self.first_code == 0 else "failed, rerun completed"

    def report(self) -> str:
        """The schedule, what happened and every finding (the assertion message)."""
        lines = [self.schedule.describe()]
        lines.append(
            f"  first run: exit {self.first_code}"
            + (f" ({self.first_error})" if self.first_error else "")
            + (f"; rerun: exit {self.rerun_code}" if self.rerun_code is not None else "")
            + f"; {self.seconds:.1f}s; faults fired: {self.fired}"
            + f"; upload sessions left: {self.leftover_sessions}"
        )
        lines += [f"  FINDING: {f}" for f in self.findings]
        lines.append(
            f"  reproduce: REPLICATOR_FAULT_SEED={self.schedule.seed} "
            "bash scripts/test-slow.sh -k fault_schedule"
        )
        return "\n".join(lines)


@dataclass
class Stack:
    """The registries the schedules of a module share, by variant."""

    running: dict[str, RunningRegistry]

    def instance(self, variant: str) -> RegistryInstance:
        """The client side of ``variant``, brought back first if it died."""
        running = self.running[variant]
        if not all(p.alive() for p in running.processes):
            running.start()
        return running.instance


class Restarts:
    """Registry restarts fired by proxy hooks; :meth:`wait` until all are back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = 0
        self._done = threading.Condition(self._lock)
        self.errors: list[str] = []

    def callback(
        self, running: RunningRegistry, downtime: float, *, lag: float = 0.0
    ) -> Callable[[], None]:
        """What a hook calls (on its own thread): restart ``running`` ``lag`` seconds later."""

        def restart() -> None:
            with self._lock:
                self._pending += 1
            try:
                time.sleep(lag)
                running.restart(downtime=downtime)
            except Exception as exc:  # reported as a finding of the schedule
                self.errors.append(f"registry restart failed: {exc}")
            finally:
                with self._lock:
                    self._pending -= 1
                    self._done.notify_all()

        return restart

    def wait(self, timeout: float = 120.0) -> None:
        """Block until no restart is under way (give late hooks a moment to start)."""
        time.sleep(0.3)
        with self._lock:
            self._done.wait_for(lambda: self._pending == 0, timeout=timeout)


@dataclass
class Setup:
    """One schedule's concrete pieces: proxies, repositories, paths, secrets."""

    schedule: Schedule
    workdir: Path
    src: RegistryInstance
    src_proxy: FaultProxy
    src_repo: str
    dst: RegistryInstance | None
    dst_proxy: FaultProxy | None
    dst_repo: str
    layout: Path | None
    roots: dict[str, Descriptor]
    env: dict[str, str]
    argv: list[str]
    #: The proxy rule of each fault, in the schedule's order.
    rules: list[FaultRule] = field(default_factory=list)

    @property
    def journal(self) -> Path:
        """The journal every run of the schedule uses."""
        return self.workdir / "journal.sqlite"

    @property
    def report(self) -> Path:
        """The ``--report`` file every run of the schedule writes."""
        return self.workdir / "report.json"

    @property
    def proxies(self) -> list[FaultProxy]:
        """The proxies of the schedule."""
        return [p for p in (self.src_proxy, self.dst_proxy) if p is not None]

    def secrets(self) -> set[str]:
        """Every password of the registries involved and every token handed out."""
        found: set[str] = set()
        for inst in (self.src, self.dst):
            if inst is None:
                continue
            found.update(p for p in inst.users.values() if p)
            if inst.password:
                found.add(inst.password)
        for proxy in self.proxies:
            found.update(proxy.tokens_seen())
        return found


def run_schedule(
    schedule: Schedule, stack: Stack, make_proxy: ProxyFactory, workdir: Path
) -> Outcome:
    """Carry out ``schedule`` and check it (see the module doc); never raises on a finding."""
    outcome = Outcome(schedule)
    started = time.monotonic()
    setup = _prepare(schedule, stack, make_proxy, workdir)
    restarts = Restarts()
    _arm(setup, stack, restarts)
    first = _run(setup.argv, setup.env)
    restarts.wait()
    outcome.fired = _fired(setup)
    for proxy in setup.proxies:
        proxy.clear()
    outcome.findings += restarts.errors
    outcome.first_code = first.code
    outcome.first_error = next(
        (line for line in first.non_log_stderr_lines() if line.startswith("Error: ")), ""
    )
    outcome.findings += _check_run(setup, "first run", first)
    if first.code != 0:
        again = _run(setup.argv, setup.env)
        outcome.rerun_code = again.code
        outcome.findings += _check_run(setup, "rerun", again)
        if again.code != 0:
            outcome.findings.append(
                f"rerun without faults failed: exit {again.code}: "
                + " | ".join(again.non_log_stderr_lines()[:2])
            )
    outcome.findings += _redirect_findings(setup)
    outcome.leftover_sessions = _leftover_sessions(setup, stack)
    outcome.seconds = time.monotonic() - started
    return outcome


def _leftover_sessions(setup: Setup, stack: Stack) -> int:
    """Upload sessions left in the destination registry's storage for its repository."""
    if setup.dst is None:
        return 0
    running = stack.running[setup.schedule.destination]
    for data in (running.workdir / "data", running.workdir / "inner" / "data"):
        where = data / "docker/registry/v2/repositories" / setup.dst_repo / "_uploads"
        if where.exists():
            return sum(1 for _ in where.iterdir())
    return 0


# -- preparing ------------------------------------------------------------------------


def _prepare(schedule: Schedule, stack: Stack, make_proxy: ProxyFactory, workdir: Path) -> Setup:
    workdir.mkdir(parents=True, exist_ok=True)
    nonce = pysecrets.token_hex(3)
    src = stack.instance(schedule.source)
    src_repo = f"fs/s{schedule.seed}-{nonce}/app"
    roots = anyio.run(_build, src, src_repo, schedule)
    src_proxy = make_proxy(src, upstream_down=_down_mode(schedule, "src"))
    dst: RegistryInstance | None = None
    dst_proxy: FaultProxy | None = None
    layout: Path | None = None
    dst_repo = ""
    if schedule.destination == "ocidir":
        layout = workdir / "layout" / "app"
    else:
        dst = stack.instance(schedule.destination)
        dst_proxy = make_proxy(dst, upstream_down=_down_mode(schedule, "dst"))
        dst_repo = f"fs/s{schedule.seed}-{nonce}/mirror"
    home = workdir / "home"
    env = isolated_env(home)
    _docker_config(home, [(src_proxy, src), (dst_proxy, dst)])
    setup = Setup(
        schedule,
        workdir,
        src,
        src_proxy,
        src_repo,
        dst,
        dst_proxy,
        dst_repo,
        layout,
        roots,
        env,
        [],
    )
    setup.argv = _argv(setup)
    return setup


async def _build(src: RegistryInstance, repo: str, schedule: Schedule) -> dict[str, Descriptor]:
    rng = random.Random(schedule.seed * 7919 + 17)
    async with RegistryTarget(src.host, src.options()) as target:
        graphs = SeededGraphs(target, repo, rng)
        return {
            tag: await graphs.build(kind, tag)
            for tag, kind in zip(schedule.tags, schedule.graphs, strict=True)
        }


def _down_mode(schedule: Schedule, side: str) -> Any:
    return next((f.down for f in schedule.faults if f.kind == "restart" and f.side == side), "502")


def _docker_config(
    home: Path, pairs: list[tuple[FaultProxy | None, RegistryInstance | None]]
) -> None:
    auths = {}
    for proxy, inst in pairs:
        if proxy is None or inst is None or inst.username is None or inst.password is None:
            continue
        raw = f"{inst.username}:{inst.password}".encode()
        auths[proxy.host] = {"auth": base64.b64encode(raw).decode()}
    docker = home / ".docker"
    docker.mkdir(parents=True, exist_ok=True)
    (docker / "config.json").write_text(json.dumps({"auths": auths}))
    (docker / "config.json").chmod(0o600)


def _argv(setup: Setup) -> list[str]:
    s = setup.schedule
    base = [
        REPLICATOR,
        "--timeout",
        str(READ_TIMEOUT),
        "--retry-deadline",
        str(RETRY_DEADLINE),
    ]
    chunk = ["--chunk-size", s.chunk_size] if s.chunk_size else []
    journal = ["--journal", str(setup.journal), "--report", str(setup.report)]
    src_repo = f"{setup.src_proxy.host}/{setup.src_repo}"
    if setup.layout is not None:
        dst_repo = f"ocidir://{setup.layout}"
    else:
        assert setup.dst_proxy is not None
        dst_repo = f"{setup.dst_proxy.host}/{setup.dst_repo}"
    if s.command == "copy-r":
        tag = s.tags[0]
        return [*base, "copy", "-r", *journal, *chunk, f"{src_repo}:{tag}", f"{dst_repo}:{tag}"]
    if s.command == "copy-all-tags":
        return [*base, "copy", "-r", "--all-tags", *journal, *chunk, src_repo, dst_repo]
    config = _sync_config(setup, src_repo, dst_repo)
    return [*base, "sync", str(config), *journal, *chunk]


def _sync_config(setup: Setup, src_repo: str, dst_repo: str) -> Path:
    """A one-job sync config copying the schedule's tags (every tag, or listed)."""
    s = setup.schedule
    lines = ["version: 1"]
    if s.sync_env_credentials:
        lines.append("registries:")
        for side, proxy, inst in (
            ("SRC", setup.src_proxy, setup.src),
            ("DST", setup.dst_proxy, setup.dst),
        ):
            if proxy is None or inst is None or inst.username is None or inst.password is None:
                continue
            variable = f"FAULT_{side}_PASSWORD"
            setup.env[variable] = inst.password
            lines.append(f"  {proxy.host}:")
            lines.append(
                f"    credentials: {{username: {inst.username}, password-env: {variable}}}"
            )
        if lines[-1] == "registries:":
            lines.pop()
    destination = (
        f"{dst_repo}" if setup.layout is None else f"ocidir://{setup.layout.parent}/{{name}}"
    )
    lines += [
        "jobs:",
        "  - name: faulted",
        f"    source: {src_repo}",
        f'    destinations: ["{destination}"]',
        "    referrers: true",
    ]
    if s.seed % 2:
        lines.append(f"    tags: {{include: [{', '.join(s.tags)}], allow: ['v\\d+']}}")
    path = setup.workdir / "sync.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _arm(setup: Setup, stack: Stack, restarts: Restarts) -> None:
    setup.rules = []
    for spec in setup.schedule.faults:
        proxy = setup.src_proxy if spec.side == "src" else setup.dst_proxy
        assert proxy is not None
        variant = setup.schedule.source if spec.side == "src" else setup.schedule.destination
        setup.rules.append(
            arm_fault(
                proxy,
                spec,
                restart=restarts.callback(stack.running[variant], spec.seconds, lag=spec.lag),
            )
        )


def arm_fault(proxy: FaultProxy, spec: FaultSpec, *, restart: Callable[[], None]) -> FaultRule:
    """Add the proxy rule ``spec`` describes (``restart``: what a restart fault calls)."""
    m, p, nth, times = spec.method, spec.path, spec.nth, spec.times
    kind = spec.kind
    if kind == "status":
        return proxy.status(
            m,
            p,
            spec.code,
            retry_after=spec.retry_after,
            nth=nth,
            times=times,
            forward=spec.forward,
        )
    elif kind == "cut":
        return proxy.cut(m, p, spec.offset, nth=nth, times=times)
    elif kind == "cut_request":
        return proxy.cut_request(m, p, spec.offset, nth=nth, times=times, forward=spec.forward)
    elif kind == "stall":
        return proxy.delay(m, p, spec.seconds, nth=nth, times=times)
    elif kind == "stall_mid":
        return proxy.delay(m, p, spec.seconds, after_bytes=spec.offset, nth=nth, times=times)
    elif kind == "truncate":
        return proxy.truncate(m, p, spec.offset, nth=nth, times=times)
    elif kind == "flip":
        return proxy.flip(m, p, spec.offset, nth=nth, times=times)
    elif kind == "flip_request":
        return proxy.flip_request(m, p, spec.offset, nth=nth, times=times)
    elif kind == "wrong_length":
        return proxy.wrong_length(m, p, spec.delta, nth=nth, times=times)
    elif kind == "wrong_digest":
        return proxy.wrong_digest(m, p, nth=nth, times=times)
    elif kind == "redirect":
        return proxy.redirect(m, p, nth=nth, times=times)
    elif kind == "throttle":
        return proxy.throttle(m, p, spec.delta, upload=spec.side == "dst", nth=nth, times=times)
    elif kind == "restart":
        return proxy.hook(m, p, restart, nth=nth, times=times)
    raise ValueError(f"unknown fault kind {kind!r}")


# -- running and checking ---------------------------------------------------------------


def _run(argv: list[str], env: Mapping[str, str]) -> CliResult:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=RUN_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return CliResult(-9, out, err + f"\nError: HUNG: no exit within {RUN_TIMEOUT}s")
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def _fired(setup: Setup) -> list[int]:
    """How often each fault of the schedule fired during the first run."""
    return [rule.fired for rule in setup.rules]


def _check_run(setup: Setup, label: str, result: CliResult) -> list[str]:
    found = []
    if result.code == -9:
        found.append(f"{label}: hung (killed after {RUN_TIMEOUT}s)")
    found += cli_findings(label, result, setup.secrets())
    found += secret_findings(label, journal_texts(setup.journal), setup.secrets())
    found += anyio.run(_destination, setup, label, result.code == 0)
    found += _journal_state(setup, label, result.code)
    found += _report_findings(setup, label, result.code)
    return found


def _report_findings(setup: Setup, label: str, code: int) -> list[str]:
    """``--report`` is written whatever ends the run, with the run's exit code, no secret."""
    if code not in (0, *FAILURE_CODES):
        return []
    try:
        text = setup.report.read_text()
        report = json.loads(text)
    except (OSError, ValueError) as exc:
        return [f"{label}: no readable --report ({type(exc).__name__})"]
    found = secret_findings(label, {"report": text}, setup.secrets())
    if report.get("exit_code") != code:
        found.append(f"{label}: --report says exit {report.get('exit_code')}, the run {code}")
    setup.report.unlink()
    return found


async def _destination(setup: Setup, label: str, complete: bool) -> list[str]:
    src: Target = RegistryTarget(setup.src.host, setup.src.options())
    dst: Target
    if setup.layout is not None:
        if not await anyio.Path(setup.layout).exists():
            return [f"{label}: no layout written"] if complete else []
        dst = OCILayoutTarget(setup.layout)
        repo = ""
    else:
        assert setup.dst is not None
        dst = RegistryTarget(setup.dst.host, setup.dst.options())
        repo = setup.dst_repo
    roots = {t: setup.roots[t] for t in setup.schedule.copied_tags}
    try:
        found = await destination_findings(
            label, src, setup.src_repo, dst, repo, roots, complete=complete
        )
        found += await every_tag_findings(label, dst, repo)
    finally:
        await src.aclose()
        await dst.aclose()
    if setup.layout is not None:
        found += layout_findings(label, setup.layout, complete=complete)
    return found


def _journal_state(setup: Setup, label: str, code: int) -> list[str]:
    """A run that exits 0 is ``done`` in the journal; one that fails is ``failed``."""
    import sqlite3

    if not setup.journal.exists():
        return [f"{label}: no journal written"] if code == 0 else []
    conn = sqlite3.connect(f"file:{setup.journal}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT state FROM runs ORDER BY started DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    state = row[0] if row else "missing"
    want = "done" if code == 0 else "failed"
    if code in (0, *FAILURE_CODES) and state != want and not (code != 0 and row is None):
        return [f"{label}: exit {code} but the journal's run is {state}"]
    return []


def _redirect_findings(setup: Setup) -> list[str]:
    found = []
    for proxy in setup.proxies:
        for req in proxy.storage_requests():
            if any(k.lower() == "authorization" for k in req.headers):
                found.append("credentials followed a redirect to another host")
    return found
