"""SIGKILL of ``replicator sync`` at random moments, then the same command again.

A config of one job copies three tags (a signed image with large chunked
layers, a signed multi-platform index, an image with referrers four deep) from
a token-auth registry to a Basic-auth registry (credentials from
``password-env``) or to OCI layouts.  Each trial kills the sync (SIGKILL) at a
seeded random moment — after a delay, once the source has delivered a share of
the blob bytes, or after the n-th manifest read — and checks:

* what the killed run left: every destination tag names a complete graph equal
  to the source's (tags last, even at a SIGKILL);
* the same command again, with the same journal, exits 0 with every tag there,
  the graphs equal, the journal's run ``done``;
* no password or token in either run's output or in the journal.

The trials are seeded (``REPLICATOR_KILL_SEED`` picks another seed).  Other
commands join through :data:`KILL_TARGETS`.

HOOK (``bundle import``): the bundle commands are being built elsewhere.  When
``replicator bundle import`` lands, add a :class:`KillTarget` for it (make the
bundle once per module; each trial imports it into a fresh destination) and
drop the skip of :func:`test_sigkill_bundle_import_trials`: these same kill
and rerun checks then apply to it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from replicator.graph.walk import snapshot_graph
from replicator.oci.descriptor import Descriptor
from replicator.targets.base import Target
from replicator.targets.ocilayout import OCILayoutTarget
from replicator.targets.registry import RegistryTarget
from tests.faults.checks import (
    cli_findings,
    destination_findings,
    every_tag_findings,
    journal_texts,
    layout_findings,
    secret_findings,
)
from tests.faults.conftest import REPORT_ENV
from tests.faults.runner import ProxyFactory, Stack
from tests.faults.world import SeededGraphs
from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import REPLICATOR, CliResult, isolated_env

SEED_ENV = "REPLICATOR_KILL_SEED"
TAGS = ("v1", "v2", "v3")
KINDS = ("large", "multiarch", "deep")


@dataclass
class KillWorld:
    """The source side shared by a test's trials."""

    src: RegistryInstance
    src_proxy: FaultProxy
    src_repo: str
    roots: dict[str, Descriptor]
    blob_bytes: int


@dataclass
class Trial:
    """One kill-and-rerun trial: where it copies to, when it kills, what it found."""

    number: int
    destination: str  # "registry" or "ocidir"
    moment: str
    killed: bool = False
    first_code: int | None = None
    findings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class KillTarget:
    """A command the kill trials run: builds its argv for a trial's destination."""

    name: str
    argv: Callable[
        [KillWorld, Path, str, Path, RegistryInstance | None, FaultProxy | None], list[str]
    ]


def _sync_argv(
    world: KillWorld,
    workdir: Path,
    destination: str,
    journal: Path,
    dst: RegistryInstance | None,
    dst_proxy: FaultProxy | None,
) -> list[str]:
    lines = [
        "version: 1",
        "registries:",
        f"  {world.src_proxy.host}:",
        f"    credentials: {{username: {world.src.username}, password-env: KILL_SRC_PASSWORD}}",
    ]
    if dst is not None and dst_proxy is not None:
        lines += [
            f"  {dst_proxy.host}:",
            f"    credentials: {{username: {dst.username}, password-env: KILL_DST_PASSWORD}}",
        ]
    lines += [
        "jobs:",
        "  - name: killed",
        f"    source: {world.src_proxy.host}/{world.src_repo}",
        f'    destinations: ["{destination}"]',
    ]
    config = workdir / "sync.yaml"
    config.write_text("\n".join(lines) + "\n")
    return [REPLICATOR, "sync", str(config), "--journal", str(journal), "--chunk-size", "512KiB"]


#: The commands the kill trials run.  HOOK: add ``bundle import`` here (module doc).
KILL_TARGETS: dict[str, KillTarget] = {"sync": KillTarget("sync", _sync_argv)}


def _world(stack: Stack, make_proxy: ProxyFactory, seed: int) -> KillWorld:
    src = stack.instance("token")
    repo = f"kill/s{seed}-{os.urandom(3).hex()}/app"

    async def build() -> tuple[dict[str, Descriptor], int]:
        async with RegistryTarget(src.host, src.options()) as target:
            graphs = SeededGraphs(target, repo, random.Random(seed))
            roots = {t: await graphs.build(k, t) for t, k in zip(TAGS, KINDS, strict=True)}
            blobs: dict[str, int] = {}
            for tag in TAGS:
                snap = await snapshot_graph(target, repo, tag)
                blobs.update({d: b.size for d, b in snap.blobs.items()})
            return roots, sum(blobs.values())

    roots, total = anyio.run(build)
    return KillWorld(src, make_proxy(src), repo, roots, total)


def _kill_when(
    proc: subprocess.Popen[str], world: KillWorld, moment: str, rng: random.Random
) -> bool:
    """Wait for ``moment`` and SIGKILL; False when the run ended first."""
    kind, _, value = moment.partition(":")
    start_requests = world.src_proxy.stats().requests("GET", "manifest")
    start_bytes = world.src_proxy.stats().bytes_down("GET", "blob")
    started = time.monotonic()
    while proc.poll() is None:
        stats = world.src_proxy.stats()
        if (
            (kind == "delay" and time.monotonic() - started >= float(value))
            or (
                kind == "bytes"
                and stats.bytes_down("GET", "blob") - start_bytes >= float(value) * world.blob_bytes
            )
            or (
                kind == "manifests"
                and stats.requests("GET", "manifest") - start_requests >= int(value)
            )
        ):
            os.kill(proc.pid, signal.SIGKILL)
            return True
        if time.monotonic() - started > 240:
            os.kill(proc.pid, signal.SIGKILL)
            return True
        time.sleep(0.003)
    return False


def _moment(rng: random.Random) -> str:
    kind = rng.choice(("delay", "bytes", "manifests"))
    if kind == "delay":
        return f"delay:{rng.uniform(0.3, 3.0):.2f}"
    if kind == "bytes":
        return f"bytes:{rng.uniform(0.02, 0.98):.2f}"
    return f"manifests:{rng.randint(1, 20)}"


def _run_trial(
    target: KillTarget,
    world: KillWorld,
    stack: Stack,
    make_proxy: ProxyFactory,
    workdir: Path,
    trial: Trial,
    rng: random.Random,
) -> None:
    workdir.mkdir(parents=True)
    journal = workdir / "journal.sqlite"
    env = isolated_env(workdir / "home")
    assert world.src.password is not None
    env["KILL_SRC_PASSWORD"] = world.src.password
    dst: RegistryInstance | None = None
    dst_proxy: FaultProxy | None = None
    if trial.destination == "registry":
        dst = stack.instance("basic")
        dst_proxy = make_proxy(dst)
        assert dst.password is not None
        env["KILL_DST_PASSWORD"] = dst.password
        dst_repo = f"kill/t{trial.number}-{os.urandom(3).hex()}/app"
        destination = f"{dst_proxy.host}/{dst_repo}"
        layout = None
    else:
        layout = workdir / "layouts" / "app"
        dst_repo = ""
        destination = f"ocidir://{layout.parent}/{{name}}"
    argv = target.argv(world, workdir, destination, journal, dst, dst_proxy)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    trial.killed = _kill_when(proc, world, trial.moment, rng)
    out, err = proc.communicate(timeout=60)
    trial.first_code = proc.returncode
    secrets = _secrets(world, dst)
    first = CliResult(proc.returncode, out, err)
    trial.findings += secret_findings("killed run", {"stdout": out, "stderr": err}, secrets)
    if "Traceback" in first.output:
        trial.findings.append("killed run: a traceback")
    trial.findings += secret_findings("killed run", journal_texts(journal), secrets)
    trial.findings += anyio.run(_dest, world, dst, dst_repo, layout, "killed run", False)
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    rerun = CliResult(again.returncode, again.stdout, again.stderr)
    trial.findings += cli_findings("rerun", rerun, _secrets(world, dst))
    if rerun.code != 0:
        trial.findings.append(f"rerun exit {rerun.code}: {rerun.non_log_stderr_lines()[:2]}")
    trial.findings += secret_findings("rerun", journal_texts(journal), _secrets(world, dst))
    trial.findings += anyio.run(_dest, world, dst, dst_repo, layout, "rerun", True)


def _secrets(world: KillWorld, dst: RegistryInstance | None) -> set[str]:
    found = set(world.src.users.values()) | set(world.src_proxy.tokens_seen())
    if dst is not None:
        found |= set(dst.users.values())
    return {s for s in found if s}


async def _dest(
    world: KillWorld,
    dst: RegistryInstance | None,
    dst_repo: str,
    layout: Path | None,
    label: str,
    complete: bool,
) -> list[str]:
    src: Target = RegistryTarget(world.src.host, world.src.options())
    target: Target
    if layout is not None:
        if not await anyio.Path(layout).exists():
            return [f"{label}: no layout"] if complete else []
        target = OCILayoutTarget(layout)
    else:
        assert dst is not None
        target = RegistryTarget(dst.host, dst.options())
    try:
        found = await destination_findings(
            label, src, world.src_repo, target, dst_repo, world.roots, complete=complete
        )
        found += await every_tag_findings(label, target, dst_repo)
    finally:
        await src.aclose()
        await target.aclose()
    if layout is not None:
        found += layout_findings(label, layout, complete=complete)
    return found


def _trials(
    target: KillTarget,
    stack: Stack,
    make_proxy: ProxyFactory,
    tmp_path: Path,
    seed: int,
    count: int,
) -> None:
    seed = int(os.environ.get(SEED_ENV, seed))
    rng = random.Random(seed)
    world = _world(stack, make_proxy, seed)
    trials = []
    for n in range(count):
        trial = Trial(n, rng.choice(("registry", "registry", "ocidir")), _moment(rng))
        _run_trial(target, world, stack, make_proxy, tmp_path / f"trial{n}", trial, rng)
        trials.append(trial)
        print(
            f"{target.name} kill trial {n} (seed {seed}): {trial.destination}, kill at "
            f"{trial.moment}, killed={trial.killed}, first exit {trial.first_code}, "
            f"findings: {trial.findings or 'none'}"
        )
    _record(target.name, seed, trials)
    bad = [t for t in trials if t.findings]
    assert not bad, "\n".join(f"trial {t.number} ({t.moment}): {t.findings}" for t in bad)
    assert sum(t.killed for t in trials) >= count // 2, "most trials ended before their kill"


def _record(command: str, seed: int, trials: list[Trial]) -> None:
    """Append the trials to ``$REPLICATOR_FAULT_REPORT`` (JSON lines), when it is set."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    with Path(path).open("a") as fh:
        for t in trials:
            line = {
                "suite": f"kill-{command}",
                "seed": seed,
                "trial": t.number,
                "destination": t.destination,
                "moment": t.moment,
                "killed": t.killed,
                "first_code": t.first_code,
                "findings": t.findings,
            }
            fh.write(json.dumps(line) + "\n")


def test_sigkill_sync_then_rerun_completes(
    fault_stack: Stack, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    _trials(KILL_TARGETS["sync"], fault_stack, fault_proxy, tmp_path, seed=77, count=2)


@pytest.mark.slow
def test_sigkill_sync_twenty_trials(
    fault_stack: Stack, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    _trials(KILL_TARGETS["sync"], fault_stack, fault_proxy, tmp_path, seed=2027, count=24)


@pytest.mark.slow
@pytest.mark.skip(reason="HOOK: bundle import is not merged yet: add it to KILL_TARGETS")
def test_sigkill_bundle_import_trials(
    fault_stack: Stack, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    _trials(KILL_TARGETS["bundle-import"], fault_stack, fault_proxy, tmp_path, seed=2028, count=20)
