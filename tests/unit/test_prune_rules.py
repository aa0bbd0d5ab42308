"""Which destination tags a job's pruning removes: the rules on their own (no registry)."""

from __future__ import annotations

from typing import Any

import pytest

from replicator.oci.reference import parse_repository
from replicator.sync.config import SyncJob, parse_config
from replicator.sync.prune_rules import backup_pattern, choose, selects_by_name, writes_to

HEX = "a" * 64


def jobs(body: str) -> dict[str, SyncJob]:
    config = parse_config(f"version: 1\njobs:\n{body}", base_dir="/tmp")
    return {job.name: job for job in config.jobs}


def one(tags: str = "{}", **extra: Any) -> SyncJob:
    lines = "".join(f"    {k}: {v}\n" for k, v in extra.items())
    return jobs(
        f"""\
  - name: j
    source: src.example.com/team/api
    destinations: [dst.example.com/team/api]
    tags: {tags}
    prune: {{enabled: true}}
{lines}"""
    )["j"]


@pytest.mark.parametrize(
    ("tags", "selected", "not_selected"),
    [
        ("{}", ["v1", "latest", "anything"], [f"sha256-{HEX}", f"sha256-{HEX}.sig"]),
        ("{allow: ['v\\d+']}", ["v1", "v22"], ["v1.0", "latest", "xv1"]),
        ("{allow: ['v.*'], deny: ['.*-rc\\d*']}", ["v1", "v2-beta"], ["v2-rc1", "latest"]),
        (
            "{semver: '>=1.2.0 <2.0.0'}",
            ["1.2.0", "v1.9.9"],
            ["1.1.0", "2.0.0", "stable", "1.9.0-beta"],
        ),
        # latest ranks versions only: any version may have been among the newest.
        ("{latest: 2}", ["v0.0.1", "9.9.9"], ["stable", "main"]),
        # include alone: exactly the included tags.
        ("{include: [stable]}", ["stable"], ["v1", "latest"]),
    ],
)
def test_the_name_rules_select_destination_tags_as_they_select_source_tags(
    tags: str, selected: list[str], not_selected: list[str]
) -> None:
    job = one(tags)
    assert [t for t in selected if selects_by_name(job.tags, t)] == selected
    assert [t for t in not_selected if selects_by_name(job.tags, t)] == []


def test_only_tags_gone_at_the_source_inside_the_selection_are_pruned() -> None:
    job = one("{allow: ['v\\d+\\.\\d+\\.\\d+'], latest: 2}")
    dest = ["v1.0.0", "v1.1.0", "v2.0.0", "dev-1", f"sha256-{HEX}", "v9.9.9"]
    # v1.1.0 fell out of the newest two but is still at the source: kept silently.
    choice = choose(job, dest, ["v1.1.0", "v2.0.0", "v3.0.0", "dev-2"])
    assert choice.prune == ("v1.0.0", "v9.9.9")
    assert choice.kept == ()


def test_included_and_immutable_tags_are_kept_with_a_reason() -> None:
    job = one("{allow: ['v.*'], include: [v0], immutable: ['v1.*']}")
    choice = choose(job, ["v0", "v1.0", "v2.0"], [])
    assert choice.prune == ("v2.0",)
    assert [t for t, _ in choice.kept] == ["v0", "v1.0"]
    assert "include" in choice.kept[0][1] and "immutable" in choice.kept[1][1]


def test_the_jobs_own_backup_tags_are_never_pruned() -> None:
    job = one("{}", backup="'{tag}-previous'")
    assert choose(job, ["v1", "v1-previous", "latest-previous"], []).prune == ("v1",)
    pattern = backup_pattern("pre-{tag}-bak")
    assert pattern is not None and pattern.fullmatch("pre-v1-bak") and not pattern.fullmatch("v1")


def test_a_tag_another_job_writing_to_the_same_repository_selects_is_kept() -> None:
    found = jobs(
        """\
  - name: stable
    source: src.example.com/team/api
    destinations: [dst.example.com/team/api]
    tags: {allow: ['v.*']}
    prune: {enabled: true}
  - name: nightly
    source: other.example.com/team/api
    destinations: [dst.example.com/team/api]
    tags: {allow: ['v.*-nightly', 'edge']}
  - name: elsewhere
    source: src.example.com/team/api
    destinations: [dst.example.com/elsewhere/api]
  - name: mirror
    source: {registry: other.example.com, repositories: ["team/*"]}
    destinations: ["dst.example.com/{repository}"]
    tags: {include: [v3-pinned]}
"""
    )
    dest = parse_repository("dst.example.com/team/api")
    neighbours = [j for n, j in found.items() if n != "stable" and writes_to(j, dest)]
    assert [j.name for j in neighbours] == ["nightly", "mirror"]
    choice = choose(found["stable"], ["v1", "v2-nightly", "v3-pinned", "edge"], [], neighbours)
    assert choice.prune == ("v1",)
    assert dict(choice.kept) == {
        "v2-nightly": "job nightly writes here too and selects this tag",
        "v3-pinned": "job mirror writes here too and selects this tag",
    }


def test_writes_to_reads_templates_and_shared_layouts() -> None:
    found = jobs(
        """\
  - name: flat
    source: {registry: src.example.com, repositories: ["**"]}
    destinations: ["dst.example.com/flat/{name}", "ocidir:///srv/airgap"]
  - name: plain
    source: src.example.com/team/web
    destinations: ["dst.example.com/mirror/{repository}"]
"""
    )
    flat, plain = found["flat"], found["plain"]
    assert writes_to(flat, parse_repository("dst.example.com/flat/api"))
    assert not writes_to(flat, parse_repository("dst.example.com/flat/a/api"))
    assert not writes_to(flat, parse_repository("dst.example.com/other/api"))
    shared = parse_repository("ocidir:///srv/airgap")
    assert writes_to(flat, shared)
    assert writes_to(plain, parse_repository("dst.example.com/mirror/team/web"))
    assert not writes_to(plain, parse_repository("dst.example.com/mirror/team/api"))
