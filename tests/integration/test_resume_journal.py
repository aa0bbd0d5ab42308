"""The journal never gives a wrong answer: a corrupt journal is set aside and the
run asks the destinations; a blob the journal remembers but the destination lost
is copied again (repair) instead of failing the run."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from replicator.targets.registry import RegistryTarget
from tests.faults.resume_support import journal_runs
from tests.integration.cli_helpers import run_cli
from tests.integration.graphs import GraphBuilder, assert_same_graph


def _target(running: Any) -> RegistryTarget:
    return RegistryTarget(running.instance.host, running.instance.options())


def _same(src: Any, dst: Any, src_ref: str, dst_repo: str, dst_ref: str) -> None:
    async def check() -> None:
        a, b = _target(src), _target(dst)
        try:
            await assert_same_graph(a, "app", src_ref, b, dst_repo, dst_ref)
        finally:
            await a.aclose()
            await b.aclose()

    anyio.run(check)


def _copy(journal: Path, home: Path, src: str, dst: str) -> Any:
    return run_cli("copy", "-r", "--journal", str(journal), src, dst, home=home, timeout=120)


def test_corrupt_journal_is_set_aside_and_the_copy_asks_the_destination(
    tmp_path: Path, registry_factory: Callable[..., Any]
) -> None:
    src, dst = registry_factory("open"), registry_factory("open")

    async def build() -> None:
        t = _target(src)
        try:
            b = GraphBuilder(t, "app")
            await b.signed_image("app:v1", tags=["v1"], layers=2, layer_size=300_000)
        finally:
            await t.aclose()

    anyio.run(build)
    journal = tmp_path / "journal.sqlite"
    s, d = src.instance.host, dst.instance.host
    first = _copy(journal, tmp_path, f"{s}/app:v1", f"{d}/one/app:v1")
    assert first.code == 0, first.stderr
    assert journal_runs(journal)[0][1] == "done"
    # Garbage over the file's first pages after the header (which still says whose
    # file it is): no longer a readable database.
    with sqlite3.connect(journal) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with journal.open("r+b") as fh:
        fh.seek(100)
        fh.write(os.urandom(8192))
    second = _copy(journal, tmp_path, f"{s}/app:v1", f"{d}/two/app:v1")
    assert second.code == 0, second.stderr
    assert "Warning: the journal" in second.stderr and "set aside" in second.stderr
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("journal.sqlite.corrupt-")]
    assert aside, list(tmp_path.iterdir())
    # A fresh journal took its place and holds the new run only.
    assert [state for _, state in journal_runs(journal)] == ["done"]
    _same(src, dst, "v1", "two/app", "v1")
    # The journal's blob cache was lost with it: the blobs were asked for, then
    # mounted from the first repository or uploaded, never assumed.
    assert "blob" in second.stdout.lower()


def _blob_paths(running: Any, repository: str, digest: str) -> list[Path]:
    root = running.workdir / "data" / "docker" / "registry" / "v2"
    hexd = digest.split(":", 1)[1]
    return [
        root / "blobs" / "sha256" / hexd[:2] / hexd,
        root / "repositories" / repository / "_layers" / "sha256" / hexd,
    ]


def test_destination_lost_a_journalled_blob_and_the_copy_repairs_it(
    tmp_path: Path, registry_factory: Callable[..., Any]
) -> None:
    src, dst = registry_factory("open"), registry_factory("open")
    shared = os.urandom(200_000)

    async def build() -> str:
        t = _target(src)
        try:
            b = GraphBuilder(t, "app")
            await b.image("app:v1", shared_layers=[shared], layers=1, tags=["v1"])
            await b.image("app:v2", shared_layers=[shared], layers=1, tags=["v2"])
            return (await b.blob(shared)).digest
        finally:
            await t.aclose()

    lost = anyio.run(build)
    journal = tmp_path / "journal.sqlite"
    s, d = src.instance.host, dst.instance.host
    first = _copy(journal, tmp_path, f"{s}/app:v1", f"{d}/mirror/app:v1")
    assert first.code == 0, first.stderr
    paths = _blob_paths(dst, "mirror/app", lost)
    assert all(p.exists() for p in paths)
    for p in paths:
        shutil.rmtree(p)
    second = _copy(journal, tmp_path, f"{s}/app:v2", f"{d}/mirror/app:v2")
    assert second.code == 0, second.stderr + second.stdout
    # The warning goes to stderr with the logs; stdout holds results only.
    assert f"Warning: {d}/mirror/app lost blob {lost}" in second.stderr
    assert "lost blob" not in second.stdout and "Warning" not in second.stdout
    assert all(p.exists() for p in paths)
    _same(src, dst, "v2", "mirror/app", "v2")
    _same(src, dst, "v1", "mirror/app", "v1")


@pytest.mark.parametrize("kind", ["config-file", "directory"])
def test_a_journal_path_naming_something_else_is_refused_and_left_alone(
    tmp_path: Path, kind: str
) -> None:
    """``--journal config.json`` by mistake: exit 8, one clear error, the file untouched."""
    work = tmp_path / "work"
    work.mkdir()
    path = work / "config.json"
    if kind == "directory":
        path.mkdir()
        (path / "keep.txt").write_text("mine")
    else:
        path.write_text('{"important": true}\n')
    before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    result = run_cli(
        "copy", "--journal", str(path), "a.invalid/x:1", "b.invalid/x:1", home=tmp_path
    )
    assert result.code == 8, result.stderr
    (line,) = result.non_log_stderr_lines()
    assert line.startswith("Error: ") and "not a replicator journal" in line
    assert "Traceback" not in result.output and result.stdout == ""
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before
    if kind == "config-file":
        assert path.read_text() == '{"important": true}\n'
    listed = run_cli("journal", "--journal", str(path), "list", home=tmp_path)
    assert listed.code == 8 and "not a replicator journal" in listed.stderr
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before


def test_journal_commands_on_a_missing_journal_create_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.sqlite"
    home = tmp_path / "home"
    listed = run_cli("journal", "--journal", str(path), "list", home=home)
    assert listed.code == 0, listed.stderr
    assert listed.stdout == f"No journal at {path}: no run recorded\n"
    as_json = run_cli("journal", "--journal", str(path), "list", "--json", home=home)
    assert as_json.code == 0 and as_json.stdout == "[]\n"
    pruned = run_cli("journal", "--journal", str(path), "gc", home=home)
    assert pruned.code == 0 and "nothing to remove" in pruned.stdout
    shown = run_cli("journal", "--journal", str(path), "show", "20260101", home=home)
    assert shown.code == 3 and "no journal" in shown.stderr
    assert not (tmp_path / "state").exists()
    # The default journal too: nothing appears under $XDG_STATE_HOME.
    default = run_cli("journal", "list", home=home)
    assert default.code == 0 and default.stdout.startswith("No journal at ")
    assert not (home / ".local" / "state").exists()
