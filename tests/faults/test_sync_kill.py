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

``bundle import`` joins the same trials (:data:`KILL_TARGETS`): the three tags
are bundled once per world (``bundle create`` from the same source, parts of
512 KiB so the large layers are split), and each trial imports that bundle
into a fresh destination (a prefix of the Basic-auth registry, credentials from
``REPLICATOR_USERNAME``/``REPLICATOR_PASSWORD``, or a new OCI layout holding the
repository under its full name) with ``--receipt`` and ``--journal`` of its own.
Its kill moments count at the destination (an import reads nothing from the
source): the blob bytes it received and the manifests written there.  The
checks above apply unchanged, to the repository the import lands in.

The trials are seeded (``REPLICATOR_KILL_SEED`` picks another seed).  Other
commands join through :data:`KILL_TARGETS`.
"""

from __future__ import annotations

import contextlib
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
    #: Digests of every manifest of the three graphs (referrers included).
    manifests: frozenset[str] = frozenset()
    #: The bundle of the three tags, for the ``bundle import`` trials.
    bundle: Path | None = None


@dataclass
class Trial:
    """One kill-and-rerun trial: where it copies to, when it kills, what it found."""

    number: int
    destination: str  # "registry" or "ocidir"
    moment: str
    killed: bool = False
    first_code: int | None = None
    findings: list[str] = field(default_factory=list)


#: Builds a trial's argv: (world, workdir, destination, journal, dst, dst_proxy).
ArgvBuilder = Callable[
    [KillWorld, Path, str, Path, RegistryInstance | None, FaultProxy | None], list[str]
]
#: Where a trial writes: (world, registry host or None, a fresh repository path, layout or
#: None) to (the command's destination text, the repository the checks read there).
Placement = Callable[[KillWorld, str | None, str, Path | None], tuple[str, str]]
#: How far a run got, for the kill moments: (world, dst proxy, layout) to (manifests, blob
#: bytes) counted so far.
ProgressProbe = Callable[[KillWorld, FaultProxy | None, Path | None], tuple[int, int]]


@dataclass(frozen=True)
class KillTarget:
    """A command the kill trials run: its argv, environment, destination and progress.

    ``prepare`` runs once per world before the trials (the bundle of ``bundle import``).
    """

    name: str
    argv: ArgvBuilder
    env: Callable[[KillWorld, RegistryInstance | None], dict[str, str]]
    place: Placement
    progress: ProgressProbe
    prepare: Callable[[KillWorld, Path], None] | None = None


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


def _sync_env(world: KillWorld, dst: RegistryInstance | None) -> dict[str, str]:
    assert world.src.password is not None
    env = {"KILL_SRC_PASSWORD": world.src.password}
    if dst is not None:
        assert dst.password is not None
        env["KILL_DST_PASSWORD"] = dst.password
    return env


def _sync_place(
    world: KillWorld, host: str | None, repo: str, layout: Path | None
) -> tuple[str, str]:
    """A repository of its own, or a layout per repository (plain tags)."""
    if layout is not None:
        return f"ocidir://{layout.parent}/{{name}}", ""
    return f"{host}/{repo}", repo


def _source_progress(
    world: KillWorld, dst_proxy: FaultProxy | None, layout: Path | None
) -> tuple[int, int]:
    """Manifests and blob bytes the source delivered (through its proxy)."""
    stats = world.src_proxy.stats()
    return stats.requests("GET", "manifest"), stats.bytes_down("GET", "blob")


def _make_bundle(world: KillWorld, where: Path) -> None:
    """``bundle create`` of the three tags from the source itself (not its proxy)."""
    where.mkdir(parents=True)
    out = where / "bundle"
    env = isolated_env(where / "home")
    assert world.src.username is not None and world.src.password is not None
    env |= {"REPLICATOR_USERNAME": world.src.username, "REPLICATOR_PASSWORD": world.src.password}
    refs = [f"{world.src.host}/{world.src_repo}:{tag}" for tag in TAGS]
    argv = [REPLICATOR, "bundle", "create", "-o", str(out), "--max-part-size", "512KiB"]
    made = subprocess.run(
        [*argv, "--no-journal", *refs],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    world.bundle = out


def _import_argv(
    world: KillWorld,
    workdir: Path,
    destination: str,
    journal: Path,
    dst: RegistryInstance | None,
    dst_proxy: FaultProxy | None,
) -> list[str]:
    assert world.bundle is not None
    return [
        REPLICATOR, "bundle", "import", str(world.bundle), destination,
        "--receipt", str(workdir / "receipt.json"), "--journal", str(journal),
    ]  # fmt: skip


def _import_env(world: KillWorld, dst: RegistryInstance | None) -> dict[str, str]:
    if dst is None:
        return {}
    assert dst.username is not None and dst.password is not None
    return {"REPLICATOR_USERNAME": dst.username, "REPLICATOR_PASSWORD": dst.password}


def _import_place(
    world: KillWorld, host: str | None, repo: str, layout: Path | None
) -> tuple[str, str]:
    """A fresh prefix (the repository lands under it), or one layout of full names."""
    if layout is not None:
        return f"ocidir://{layout}", world.src_repo
    return f"{host}/{repo}", f"{repo}/{world.src_repo}"


def _destination_progress(
    world: KillWorld, dst_proxy: FaultProxy | None, layout: Path | None
) -> tuple[int, int]:
    """Manifests written and blob bytes received at the destination."""
    if dst_proxy is not None:
        stats = dst_proxy.stats()
        return stats.requests("PUT", "manifest"), stats.bytes_up(kind="upload")
    assert layout is not None
    manifests = written = 0
    try:
        entries = list(os.scandir(layout / "blobs" / "sha256"))
    except FileNotFoundError:
        return 0, 0
    for entry in entries:
        if f"sha256:{entry.name}" in world.manifests:
            manifests += 1
            continue
        with contextlib.suppress(FileNotFoundError):  # renamed in between
            written += entry.stat().st_size  # blobs and the temporary files being written
    return manifests, written


#: The commands the kill trials run.
KILL_TARGETS: dict[str, KillTarget] = {
    "sync": KillTarget("sync", _sync_argv, _sync_env, _sync_place, _source_progress),
    "bundle-import": KillTarget(
        "bundle-import",
        _import_argv,
        _import_env,
        _import_place,
        _destination_progress,
        prepare=_make_bundle,
    ),
}


def _world(stack: Stack, make_proxy: ProxyFactory, seed: int) -> KillWorld:
    src = stack.instance("token")
    repo = f"kill/s{seed}-{os.urandom(3).hex()}/app"

    async def build() -> tuple[dict[str, Descriptor], int, frozenset[str]]:
        async with RegistryTarget(src.host, src.options()) as target:
            graphs = SeededGraphs(target, repo, random.Random(seed))
            roots = {t: await graphs.build(k, t) for t, k in zip(TAGS, KINDS, strict=True)}
            blobs: dict[str, int] = {}
            manifests: set[str] = set()
            for tag in TAGS:
                snap = await snapshot_graph(target, repo, tag)
                blobs.update({d: b.size for d, b in snap.blobs.items()})
                manifests.update(snap.manifests)
            return roots, sum(blobs.values()), frozenset(manifests)

    roots, total, manifests = anyio.run(build)
    return KillWorld(src, make_proxy(src), repo, roots, total, manifests)


def _kill_when(
    proc: subprocess.Popen[str],
    world: KillWorld,
    moment: str,
    progress: Callable[[], tuple[int, int]],
) -> bool:
    """Wait for ``moment`` and SIGKILL; False when the run ended first.

    ``progress``: the manifests and blob bytes the run has moved so far (the target's
    own count: read at the source for ``sync``, written at the destination for an import).
    """
    kind, _, value = moment.partition(":")
    start_manifests, start_bytes = progress()
    started = time.monotonic()
    while proc.poll() is None:
        manifests, moved = progress()
        if (
            (kind == "delay" and time.monotonic() - started >= float(value))
            or (kind == "bytes" and moved - start_bytes >= float(value) * world.blob_bytes)
            or (kind == "manifests" and manifests - start_manifests >= int(value))
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
) -> None:
    workdir.mkdir(parents=True)
    journal = workdir / "journal.sqlite"
    env = isolated_env(workdir / "home")
    dst: RegistryInstance | None = None
    dst_proxy: FaultProxy | None = None
    layout: Path | None = None
    if trial.destination == "registry":
        dst = stack.instance("basic")
        dst_proxy = make_proxy(dst)
    else:
        layout = workdir / "layouts" / "app"
    env |= target.env(world, dst)
    fresh = f"kill/t{trial.number}-{os.urandom(3).hex()}/app"
    destination, dst_repo = target.place(
        world, dst_proxy.host if dst_proxy is not None else None, fresh, layout
    )
    argv = target.argv(world, workdir, destination, journal, dst, dst_proxy)
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    trial.killed = _kill_when(
        proc, world, trial.moment, lambda: target.progress(world, dst_proxy, layout)
    )
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
    if target.prepare is not None:
        target.prepare(world, tmp_path / "world")
    trials = []
    for n in range(count):
        trial = Trial(n, rng.choice(("registry", "registry", "ocidir")), _moment(rng))
        _run_trial(target, world, stack, make_proxy, tmp_path / f"trial{n}", trial)
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


def test_sigkill_bundle_import_then_rerun_completes(
    fault_stack: Stack, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    target = KILL_TARGETS["bundle-import"]
    _trials(target, fault_stack, fault_proxy, tmp_path, seed=78, count=2)


@pytest.mark.slow
def test_sigkill_bundle_import_trials(
    fault_stack: Stack, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    _trials(KILL_TARGETS["bundle-import"], fault_stack, fault_proxy, tmp_path, seed=2028, count=20)
