"""Catalog sources and destination mapping of ``replicator sync`` against real registries.

A catalog job selects repositories with ordered globs (``**``, ``!`` negation,
a later pattern re-selecting), and maps each to a registry repository through
``{repository}`` and ``{name}``, to one shared OCI layout (``ocidir://./airgap``:
tags stored as ``<repository>:<tag>``) and to one layout per repository
(``ocidir://./per/{name}``: plain tags).  The destination is the referrers-API
variant.  Two repositories mapped onto one destination are refused before
anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio

from replicator.targets.ocilayout import OCILayoutTarget
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import GraphBuilder, assert_same_graph
from tests.integration.sync_helpers import plain_tags, run_sync, with_target, write_config

REPOSITORIES = (
    "team/api",
    "team/web",
    "team/legacy-old",
    "team/legacy-keep",
    "team/sub/deep",
    "other/x",
    "other/api",
)
REF_NAME = "org.opencontainers.image.ref.name"


def _seed(reg: RegistryInstance, base: str) -> None:
    async def work(t: RegistryTarget) -> None:
        for repo in REPOSITORIES:
            await GraphBuilder(t, f"{base}/{repo}").signed_image(repo, tags=["v1"])

    with_target(reg, work)


def _ref_names(layout: Path) -> set[str]:
    index = json.loads((layout / "index.json").read_text())
    return {
        m["annotations"][REF_NAME]
        for m in index["manifests"]
        if REF_NAME in m.get("annotations", {})
    }


def _config(path: Path, src: str, dst: str, base: str) -> Path:
    return write_config(
        path,
        f"""\
version: 1
jobs:
  - name: mirror
    source:
      registry: {src}
      repositories: ["{base}/team/**", "!{base}/team/legacy-*", "{base}/team/legacy-keep"]
    destinations: ["{dst}/mirror/{{repository}}", "ocidir://./airgap"]
  - name: flat
    source: {{registry: {src}, repositories: ["{base}/team/*", "!{base}/team/legacy-*"]}}
    destinations: ["{dst}/{base}/flat/{{name}}", "ocidir://./per/{{name}}"]
  - name: collide
    source: {{registry: {src}, repositories: ["{base}/*/api"]}}
    destinations: ["{dst}/{base}/clash/{{name}}"]
""",
    )


def test_catalog_globs_and_mapping_to_registries_and_layouts(
    registry_open: RegistryInstance,
    registry_referrers: RegistryInstance,
    unique_repo: Any,
    tmp_path: Path,
) -> None:
    base = str(unique_repo)
    _seed(registry_open, base)
    config = _config(tmp_path / "sync.yaml", registry_open.host, registry_referrers.host, base)

    collide = run_sync("sync", config, "--job", "collide", "--no-journal", home=tmp_path)
    assert collide.code == 2, collide.cli.stderr[-2000:]
    assert f"{base}/team/api" in collide.cli.stderr and f"{base}/other/api" in collide.cli.stderr
    assert plain_tags(registry_referrers, f"{base}/clash/api") == set()  # nothing written

    plan = run_sync("sync", config, "--job", "mirror", "--dry-run", home=tmp_path)
    assert plan.code == 0, plan.cli.stderr[-3000:]
    # A shared layout destination names the repository inside it.
    src, dst = registry_open.host, registry_referrers.host
    assert (
        f"{src}/{base}/team/api => {dst}/mirror/{base}/team/api, "
        f"ocidir://{tmp_path / 'airgap'} ({base}/team/api)"
    ) in plan.stdout, plan.stdout
    repos = plan.report["jobs"]["mirror"]["repositories"]
    assert f"ocidir://{tmp_path / 'airgap'} ({base}/team/web)" in [
        d for r in repos for d in r["destinations"]
    ]
    assert not (tmp_path / "airgap").exists()  # a dry run creates no layout
    before = run_sync("verify", config, "--job", "mirror", home=tmp_path)
    assert before.code == 9, before.stdout + before.cli.stderr[-2000:]
    assert f"tag-missing: ocidir://{tmp_path / 'airgap'}" in before.stdout
    assert not (tmp_path / "airgap").exists()  # nor does verify

    run = run_sync("sync", config, "--job", "mirror", "--job", "flat", home=tmp_path)
    assert run.code == 0, run.cli.stderr[-3000:]
    catalog = {
        d["repository"].removeprefix(f"{base}/"): (d["selected"], d["reason"])
        for d in run.report["jobs"]["mirror"]["catalog"]
        if d["repository"].startswith(f"{base}/")
    }
    assert catalog == {
        "team/api": (True, f"selected by '{base}/team/**'"),
        "team/web": (True, f"selected by '{base}/team/**'"),
        "team/sub/deep": (True, f"selected by '{base}/team/**'"),
        "team/legacy-old": (False, f"excluded by '!{base}/team/legacy-*'"),
        "team/legacy-keep": (True, f"selected by '{base}/team/legacy-keep'"),
        "other/x": (False, "matches no pattern"),
        "other/api": (False, "matches no pattern"),
    }
    flat = {
        d["repository"].removeprefix(f"{base}/")
        for d in run.report["jobs"]["flat"]["catalog"]
        if d["selected"]
    }
    assert flat == {"team/api", "team/web"}  # '*' does not cross '/'

    mirrored = ("team/api", "team/web", "team/sub/deep", "team/legacy-keep")
    shared = tmp_path / "airgap"
    assert _ref_names(shared) == {f"{base}/{repo}:v1" for repo in mirrored}
    for name in ("api", "web"):
        assert _ref_names(tmp_path / "per" / name) == {"v1"}
    assert not (tmp_path / "per" / "deep").exists()

    async def compare() -> None:
        async with (
            RegistryTarget(registry_open.host, registry_open.options()) as src,
            RegistryTarget(registry_referrers.host, registry_referrers.options()) as dst,
        ):
            layout = OCILayoutTarget(shared)
            for repo in mirrored:
                await assert_same_graph(
                    src, f"{base}/{repo}", "v1", dst, f"mirror/{base}/{repo}", "v1"
                )
                await assert_same_graph(src, f"{base}/{repo}", "v1", layout, f"{base}/{repo}", "v1")
            for repo in ("team/api", "team/web"):
                name = repo.rsplit("/", 1)[1]
                await assert_same_graph(
                    src, f"{base}/{repo}", "v1", dst, f"{base}/flat/{name}", "v1"
                )
                per = OCILayoutTarget(tmp_path / "per" / name)
                await assert_same_graph(src, f"{base}/{repo}", "v1", per, "", "v1")

    anyio.run(compare)
    assert plain_tags(registry_referrers, f"mirror/{base}/team/legacy-old") == set()
    assert plain_tags(registry_referrers, f"mirror/{base}/other/x") == set()

    audit = run_sync("verify", config, "--job", "mirror", "--job", "flat", "--deep", home=tmp_path)
    assert audit.code == 0, audit.stdout + audit.cli.stderr[-2000:]
    assert "Verified: 6 tags" in audit.stdout
