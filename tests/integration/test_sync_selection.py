"""Tag selection of ``replicator sync`` against real registries: each rule alone and composed.

One source repository holds versions, pre-releases, words, a referrers
fallback tag (``sha256-<hex>``, made by the signature pushed to a registry
without the referrers API) and a tag-based signature (``sha256-<hex>.sig``).
One config runs a job per rule (and one composing all of them) into a
destination repository of its own; the destination's tags must be exactly the
selected ones, and the report must give every other tag its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from replicator.oci.reference import referrers_tag
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import GraphBuilder
from tests.integration.sync_helpers import (
    all_tags,
    plain_tags,
    run_sync,
    with_target,
    write_config,
)

TAGS = (
    "v1.0.0",
    "v1.2.0",
    "v1.2.1",
    "1.2.1",
    "v1.3.0-rc1",
    "v2.0.0",
    "v10.0.0",
    "latest",
    "stable",
    "nightly-2024",
)

#: Each job's tag rules and the tags it must select (the destination's tags after the run).
JOBS: dict[str, tuple[str, set[str]]] = {
    "every": ("{}", set(TAGS)),
    "allow": (
        r"{allow: ['v\d+\.\d+\.\d+']}",
        {"v1.0.0", "v1.2.0", "v1.2.1", "v2.0.0", "v10.0.0"},
    ),
    "deny": (
        r"{deny: ['.*-rc\d*', 'nightly.*']}",
        set(TAGS) - {"v1.3.0-rc1", "nightly-2024"},
    ),
    "semver": ("{semver: '>=1.2.0 <2.0.0'}", {"v1.2.0", "v1.2.1", "1.2.1"}),
    "latest": ("{latest: 3}", {"v10.0.0", "v2.0.0", "v1.3.0-rc1"}),
    "include": ("{include: [stable, latest]}", {"stable", "latest"}),
    "composed": (
        r"{allow: ['v?\d+\.\d+\.\d+(-.+)?'], deny: ['.*-rc\d*'], semver: '>=1.2.0',"
        " latest: 2, include: [stable, v1.0.0]}",
        {"v10.0.0", "v2.0.0", "stable", "v1.0.0"},
    ),
}


def _seed(reg: RegistryInstance, repo: str) -> dict[str, str]:
    async def work(t: RegistryTarget) -> dict[str, str]:
        b = GraphBuilder(t, repo)
        signed = await b.signed_image("app", tags=TAGS)
        hexdigest = signed.image.digest.split(":", 1)[1]
        # A tag-based signature of an older tool: digest-like, never selected.
        await b.image("old-style-signature", tags=[f"sha256-{hexdigest}.sig"])
        return {"image": signed.image.digest, "sig_tag": f"sha256-{hexdigest}.sig"}

    return with_target(reg, work)


def _config(path: Path, host: str, base: str) -> Path:
    jobs = "".join(
        f"""\
  - name: {name}
    source: {host}/{base}/src
    destinations: [{host}/{base}/{name}]
    tags: {rules}
"""
        for name, (rules, _) in JOBS.items()
    )
    return write_config(path, f"version: 1\njobs:\n{jobs}")


def test_each_rule_and_their_composition_select_exactly_the_documented_tags(
    registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    base = str(unique_repo)
    seeded = _seed(registry_open, f"{base}/src")
    fallback = referrers_tag(seeded["image"])
    config = _config(tmp_path / "sync.yaml", registry_open.host, base)

    run = run_sync("sync", config, "--no-journal", home=tmp_path)
    assert run.code == 0, run.cli.stderr[-3000:]

    for name, (_, expected) in JOBS.items():
        assert set(run.selected(name)) == expected, name
        assert plain_tags(registry_open, f"{base}/{name}") == expected, name
        reasons = run.reasons(name)
        if name != "include":  # include alone lists nothing
            assert reasons[fallback].startswith("referrers fallback tag"), name
            assert reasons[seeded["sig_tag"]] == "digest-like tag: never selected", name
        # Every result copied the one image under the selected tags.
        assert all(r["status"] == "copied" for r in run.results(name)), name

    # Reasons name the rule that dropped each tag (documented wording).
    assert run.reasons("allow")["v1.3.0-rc1"].startswith("matches no allow pattern")
    assert run.reasons("deny")["nightly-2024"] == "denied by 'nightly.*'"
    assert run.reasons("semver")["v1.3.0-rc1"] == "outside >=1.2.0 <2.0.0"
    assert run.reasons("semver")["stable"].startswith("not a semantic version")
    assert run.reasons("latest")["v1.2.1"] == "not among the newest 3"
    assert run.reasons("latest")["stable"].startswith("not a semantic version (latest: 3")
    composed = run.reasons("composed")
    assert composed["v1.3.0-rc1"].startswith("denied by")
    assert composed["v1.0.0"].startswith("selected: in include (otherwise: outside >=1.2.0")
    assert composed["v1.2.1"] == "not among the newest 2"
    assert composed["stable"].startswith("selected: in include")
    assert composed["nightly-2024"].startswith("matches no allow pattern")
    # The source's digest-like tags never reach a destination.
    for name in JOBS:
        assert seeded["sig_tag"] not in all_tags(registry_open, f"{base}/{name}")
