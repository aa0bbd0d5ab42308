"""``--shard I/N``: the stable split of source repositories, the flags, and sharded
sync runs over OCI layouts (each shard its own repositories, run key and journal)."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import anyio
import pytest

from replicator.cli.cmd_sync import shard_from_args
from replicator.cli.main import build_parser
from replicator.errors import UsageError
from replicator.journal.store import default_journal_path
from replicator.oci.reference import parse_repository
from replicator.sync import JournalChoice, TargetPool
from replicator.sync.config import SyncConfig, load_config
from replicator.sync.shard import Shard, shard_name, shard_of
from replicator.sync.syncing import SyncOutcome, SyncRequest, run_definition, run_sync, run_verify
from replicator.targets.ocilayout import OCILayoutTarget
from tests.integration.graphs import GraphBuilder

NAMES = [f"registry.example/team/app-{i:03d}" for i in range(300)]


def test_the_shard_of_a_name_is_the_first_8_bytes_of_its_sha256_modulo_n() -> None:
    # Pinned values: a change of the hash (salt, byte order, encoding) would move
    # repositories between the pods of a running Indexed Job, so it must fail here.
    # sha256("dev.example.com/team/api")[:8] = 58d5307c28d8e5f7
    assert [shard_of("dev.example.com/team/api", n) for n in (1, 2, 3, 7, 1000)] == [
        0,
        1,
        2,
        6,
        335,
    ]
    assert [shard_of("docker.io/library/alpine", n) for n in (2, 3, 7, 1000)] == [0, 1, 6, 172]
    assert [shard_of("a", n) for n in (2, 3, 7, 1000)] == [0, 1, 4, 250]
    for name in (*NAMES[:50], "réseau/ünïcode"):
        assert shard_of(name, 7) == _expected(name, 7)


def test_a_repository_is_sharded_by_its_path_not_its_host() -> None:
    a = parse_repository("dev.example.com:5000/team/api")
    b = parse_repository("mirror.example.com/team/api")
    assert shard_name(a) == shard_name(b) == "team/api"
    assert shard_name(parse_repository("docker.io/alpine")) == "library/alpine"
    assert shard_name(parse_repository("ocidir:///srv/airgap")) == "ocidir:///srv/airgap"


def _expected(name: str, n: int) -> int:
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:16], 16) % n


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_every_name_belongs_to_exactly_one_shard_and_the_split_is_even(count: int) -> None:
    shards = [Shard(i, count) for i in range(count)]
    owners = {name: [s.index for s in shards if s.owns(name)] for name in NAMES}
    assert all(len(o) == 1 for o in owners.values())
    sizes = [sum(1 for o in owners.values() if o == [i]) for i in range(count)]
    assert sum(sizes) == len(NAMES)
    # 300 names: no shard is empty or holds more than twice its share.
    assert min(sizes) > 0 and max(sizes) <= 2 * len(NAMES) / count
    mine, others = shards[0].split(NAMES, lambda n: n)
    assert sorted(mine + others) == sorted(NAMES)
    assert mine == [n for n in NAMES if owners[n] == [0]]  # order kept


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("3/3", "the index must be from 0 to 2"),
        ("0/0", "the count must be at least 1"),
        ("-1/3", "is not a shard"),
        ("1", "is not a shard"),
        ("a/b", "is not a shard"),
        ("1/3/5", "is not a shard"),
    ],
)
def test_a_bad_shard_is_a_usage_error(text: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        Shard.parse(text)


def test_the_index_comes_from_job_completion_index() -> None:
    assert Shard.from_environment(3, {"JOB_COMPLETION_INDEX": "2"}) == Shard(2, 3)
    with pytest.raises(UsageError, match="JOB_COMPLETION_INDEX is not set"):
        Shard.from_environment(3, {})
    with pytest.raises(UsageError, match="'x' is not an index"):
        Shard.from_environment(3, {"JOB_COMPLETION_INDEX": "x"})
    with pytest.raises(UsageError, match="completions must equal the shard count"):
        Shard.from_environment(3, {"JOB_COMPLETION_INDEX": "3"})


def test_each_shard_has_its_own_journal_file() -> None:
    shard = Shard(1, 3)
    assert shard.journal_path(Path("/s/journal.sqlite")) == Path("/s/journal.shard-1-of-3.sqlite")
    assert shard.journal_path(Path("/s/journal")) == Path("/s/journal.shard-1-of-3")
    default = shard.journal(JournalChoice())
    assert default.path == default_journal_path().with_name("journal.shard-1-of-3.sqlite")
    fresh = shard.journal(JournalChoice.at("/s/j.db", fresh=True))
    assert (fresh.path, fresh.fresh) == (Path("/s/j.shard-1-of-3.db"), True)
    assert shard.journal(JournalChoice.off()) == JournalChoice.off()


def _args(*words: str) -> argparse.Namespace:
    return build_parser().parse_args(list(words))


@pytest.mark.parametrize("command", ["sync", "verify"])
def test_the_flags_of_sync_and_verify(command: str) -> None:
    assert shard_from_args(_args(command, "c.yaml")) is None
    assert shard_from_args(_args(command, "c.yaml", "--shard", "1/3")) == Shard(1, 3)
    env_args = _args(command, "c.yaml", "--shard-from-env", "4")
    assert shard_from_args(env_args, {"JOB_COMPLETION_INDEX": "3"}) == Shard(3, 4)
    with pytest.raises(UsageError, match="JOB_COMPLETION_INDEX is not set"):
        shard_from_args(env_args, {})


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--shard", "3/3"], "argument --shard: shard 3/3: the index must be from 0 to 2"),
        (["--shard", "x"], "argument --shard: 'x' is not a shard"),
        (["--shard-from-env", "0"], "argument --shard-from-env: must be at least 1"),
        (["--shard", "0/2", "--shard-from-env", "2"], "not allowed with argument"),
    ],
)
def test_bad_shard_flags_are_usage_errors(
    words: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _args("sync", "c.yaml", *words)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_run_key_names_the_shard(tmp_path: Path) -> None:
    config = _config(tmp_path, 2)
    plain = run_definition("sync", config, (), None)
    assert "shard" not in plain  # unsharded runs keep the key they had
    assert run_definition("sync", config, (), Shard(0, 2)) == {**plain, "shard": "0/2"}
    assert run_definition("sync", config, (), Shard(1, 2))["shard"] == "1/2"


# -- sharded runs over OCI layouts (no registry) ------------------------------------


def _config(tmp_path: Path, sources: int) -> SyncConfig:
    jobs = "".join(
        f"  - name: j{i}\n    source: ocidir://./src{i}\n    destinations: [ocidir://./dst{i}]\n"
        for i in range(sources)
    )
    path = tmp_path / "sync.yaml"
    path.write_text("version: 1\njobs:\n" + jobs)
    return load_config(path)


def _layouts(tmp_path: Path, sources: int) -> None:
    async def build() -> None:
        for i in range(sources):
            target = OCILayoutTarget(tmp_path / f"src{i}", create=True)
            try:
                await GraphBuilder(target, "").signed_image(f"app{i}", tags=["v1"])
            finally:
                await target.aclose()

    anyio.run(build)


def _sync(config: SyncConfig, journal: Path, shard: Shard | None) -> SyncOutcome:
    async def go() -> SyncOutcome:
        async with TargetPool() as targets:
            request = SyncRequest(config, journal=JournalChoice.at(journal), shard=shard)
            return await run_sync(request, targets=targets)

    return anyio.run(go)


def test_shards_of_a_sync_copy_every_source_once_with_their_own_journals(tmp_path: Path) -> None:
    sources = 8
    _layouts(tmp_path, sources)
    config = _config(tmp_path, sources)
    journal = tmp_path / "state" / "journal.sqlite"
    outcomes = [_sync(config, journal, Shard(i, 3)) for i in range(3)]
    handled: list[str] = []
    for i, outcome in enumerate(outcomes):
        assert outcome.exit_code == 0
        mine = [str(r.source) for p in outcome.expansion.jobs for r in p.repositories]
        assert all(shard_of(name, 3) == i for name in mine)
        handled += mine
        report = outcome.to_json()
        assert report["shard"] == {
            "index": i,
            "count": 3,
            "label": f"{i}/3",
            "repositories": len(mine),
            "other_shards": sources - len(mine),
        }
        if mine:
            assert outcome.run is not None
            assert outcome.run.journal == tmp_path / "state" / f"journal.shard-{i}-of-3.sqlite"
            assert outcome.run.report.manifests_pushed == 4 * len(mine)
    assert sorted(handled) == sorted(f"ocidir://{tmp_path}/src{i}" for i in range(sources))
    # Every destination got its graph, from exactly one shard.
    for i in range(sources):
        assert (tmp_path / f"dst{i}" / "index.json").exists()
    assert not journal.exists()  # nobody used the unsharded journal
    # Again: every shard resumes nothing and finds its share up to date.
    again = _sync(config, journal, Shard(0, 3))
    assert again.run is None or again.run.status == "up-to-date"


def test_verify_of_one_shard_audits_only_its_repositories(tmp_path: Path) -> None:
    sources = 6
    _layouts(tmp_path, sources)
    config = _config(tmp_path, sources)
    shard = Shard(0, 2)

    async def verify() -> SyncOutcome:
        async with TargetPool() as targets:
            return await run_verify(config, targets=targets, shard=shard)

    before = anyio.run(verify)
    mine = {str(r.source) for p in before.expansion.jobs for r in p.repositories}
    assert mine and len(mine) < sources
    assert before.exit_code == 9  # nothing copied yet: differences
    assert {d.destination.rsplit("/", 1)[-1].split(":")[0] for d in before.differences} == {
        f"dst{name.rsplit('src', 1)[1]}" for name in mine
    }
    _sync(config, tmp_path / "j.sqlite", shard)
    assert anyio.run(verify).exit_code == 0  # the shard's own share is complete
