"""Tag and repository selection with reasons, and destination mapping (pure functions)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.errors import ConfigError
from replicator.oci.reference import Reference, parse_repository, referrers_tag
from replicator.sync.config_schema import TagRules
from replicator.sync.mapping import (
    backup_tag,
    check_backup_template,
    check_destination_template,
    describe_destination,
    is_shared_layout,
    map_destination,
    map_repositories,
    template_fields,
)
from replicator.sync.selection import (
    is_digest_like,
    is_immutable,
    needs_listing,
    repository_matches,
    select_repositories,
    select_tags,
    semver_of,
)

FALLBACK = referrers_tag("sha256:" + "ab" * 32)
COSIGN_SIG = "sha256-" + "cd" * 32 + ".sig"


def rules(**fields: Any) -> TagRules:
    return TagRules.model_validate(fields)


def reasons(selection: Any) -> dict[str, str]:
    return {d.tag: d.reason for d in selection.decisions}


# --------------------------------------------------------------------------- composition


def test_the_rules_compose_in_order_with_a_reason_for_every_tag() -> None:
    tags = [
        "v1.0.0",
        "v1.2.0",
        "v1.3.0",
        "v1.4.0",
        "v1.5.0-rc1",
        "v1.6.0",
        "v2.0.0",
        "latest",
        "stable",
        FALLBACK,
        COSIGN_SIG,
    ]
    chosen = select_tags(
        rules(
            allow=[r"v\d+\.\d+\.\d+(-rc\d*)?"],
            deny=[r".*-rc\d*"],
            semver=">=1.2.0 <2.0.0",
            latest=2,
            include=["stable", "v1.0.0"],
        ),
        tags,
    )
    assert chosen.selected == ("v1.4.0", "v1.6.0", "stable", "v1.0.0")
    assert reasons(chosen) == {
        "v1.0.0": "selected: in include (otherwise: outside >=1.2.0 <2.0.0)",
        "v1.2.0": "not among the newest 2",
        "v1.3.0": "not among the newest 2",
        "v1.4.0": r"selected: allowed by 'v\d+\.\d+\.\d+(-rc\d*)?'; within >=1.2.0 <2.0.0; "
        "newest #2 of 2",
        "v1.5.0-rc1": r"denied by '.*-rc\d*'",
        "v1.6.0": r"selected: allowed by 'v\d+\.\d+\.\d+(-rc\d*)?'; within >=1.2.0 <2.0.0; "
        "newest #1 of 2",
        "v2.0.0": "outside >=1.2.0 <2.0.0",
        "latest": r"matches no allow pattern ('v\d+\.\d+\.\d+(-rc\d*)?')",
        "stable": r"selected: in include (otherwise: matches no allow pattern "
        r"('v\d+\.\d+\.\d+(-rc\d*)?'))",
        FALLBACK: "referrers fallback tag: its content travels with its subject",
        COSIGN_SIG: "digest-like tag: never selected",
    }
    assert [d.tag for d in chosen.decisions] == tags  # listing order


def test_no_rules_select_every_tag_but_digest_like_ones() -> None:
    chosen = select_tags(TagRules(), ["b", "a", FALLBACK, COSIGN_SIG, "a"])
    assert chosen.selected == ("b", "a")
    assert reasons(chosen)["a"] == "selected: no tag filters"


def test_include_alone_selects_exactly_its_tags_without_a_listing() -> None:
    only = rules(include=["stable", "v1"])
    assert not needs_listing(only)
    chosen = select_tags(only, None)
    assert chosen.selected == ("stable", "v1")
    assert reasons(chosen) == {"stable": "selected: in include", "v1": "selected: in include"}
    listed = select_tags(only, ["v1", "v2"])
    assert listed.selected == ("stable", "v1")  # the include's order
    assert reasons(listed) == {
        "v1": "selected: in include",
        "v2": "not in include",
        "stable": "selected: in include (not in the listing: its copy fails if it is missing)",
    }


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"allow": ["a"]},
        {"deny": ["a"]},
        {"semver": ">=1"},
        {"latest": 1},
        {"latest": 1, "include": ["x"]},
    ],
)
def test_filters_need_the_listing(fields: dict[str, Any]) -> None:
    assert needs_listing(rules(**fields))
    with pytest.raises(ValueError, match="need the repository's tag listing"):
        select_tags(rules(**fields), None)


def test_deny_alone_keeps_the_rest() -> None:
    chosen = select_tags(rules(deny=["dev-.*"]), ["dev-1", "v1", "dev"])
    assert chosen.selected == ("v1", "dev")
    assert reasons(chosen)["v1"] == "selected: not denied"


@pytest.mark.parametrize(
    ("pattern", "tag", "selected"),
    [
        ("v1", "v1", True),
        ("v1", "v10", False),
        ("v1", "xv1", False),
        (r"v\d+", "v12", True),
        (r"v\d+", "v12-rc", False),
        ("a|b", "ab", False),  # anchoring wraps the whole alternation
        ("a|b", "b", True),
    ],
)
def test_allow_and_deny_patterns_match_the_whole_tag(
    pattern: str, tag: str, selected: bool
) -> None:
    assert (tag in select_tags(rules(allow=[pattern]), [tag]).selected) is selected
    assert (tag in select_tags(rules(deny=[pattern]), [tag]).selected) is not selected


def test_semver_drops_tags_that_are_not_versions_and_follows_npm_prereleases() -> None:
    tags = ["1.2.0", "v1.9.0-beta", "2.0.0-rc.1", "2.0.0", "1.2", "main", "V1.3.0"]
    chosen = select_tags(rules(semver=">=1.2.0 <2.0.0"), tags)
    assert chosen.selected == ("1.2.0",)
    got = reasons(chosen)
    assert got["v1.9.0-beta"] == "outside >=1.2.0 <2.0.0"
    assert got["1.2"] == "not a semantic version (semver: '>=1.2.0 <2.0.0')"
    assert got["V1.3.0"] == "not a semantic version (semver: '>=1.2.0 <2.0.0')"
    pre = select_tags(rules(semver=">=2.0.0-rc.0 <3"), tags)
    assert pre.selected == ("2.0.0-rc.1", "2.0.0")
    assert select_tags(rules(semver="1.x || ^3.1"), ["1.0.0", "2.0.0", "3.4.5"]).selected == (
        "1.0.0",
        "3.4.5",
    )


def test_latest_ranks_versions_only_by_precedence() -> None:
    chosen = select_tags(rules(latest=2), ["1.2.3", "1.10.0", "1.9.0", "2.0.0-rc.1", "stable"])
    assert chosen.selected == ("1.10.0", "2.0.0-rc.1")  # listing order, not rank order
    got = reasons(chosen)
    assert got["2.0.0-rc.1"] == "selected: not denied; newest #1 of 2"
    assert got["1.10.0"] == "selected: not denied; newest #2 of 2"
    assert got["1.9.0"] == "not among the newest 2"
    assert got["1.2.3"] == "not among the newest 2"
    assert got["stable"] == "not a semantic version (latest: 2 ranks versions only)"


def test_latest_breaks_ties_between_equal_versions_by_tag() -> None:
    assert select_tags(rules(latest=1), ["1.2.3", "v1.2.3", "1.1.0"]).selected == ("v1.2.3",)
    assert select_tags(rules(latest=1), ["v1.2.3", "1.2.3"]).selected == ("v1.2.3",)


def test_latest_with_no_version_selects_only_the_included_tags() -> None:
    chosen = select_tags(rules(latest=3, include=["main"]), ["main", "dev", "feature-x"])
    assert chosen.selected == ("main",)


def test_semver_of_accepts_one_leading_v_only() -> None:
    assert str(semver_of("v1.2.3")) == "1.2.3"
    assert str(semver_of("1.2.3-rc.1")) == "1.2.3-rc.1"
    for tag in ("vv1.2.3", "1.2", "1.2.3.4", "v", "latest", "01.2.3"):
        assert semver_of(tag) is None


def test_digest_like_tags() -> None:
    assert is_digest_like(FALLBACK)
    assert is_digest_like(COSIGN_SIG)
    assert is_digest_like("sha256-" + "0" * 64 + ".att")
    assert not is_digest_like("sha256")
    assert not is_digest_like("sha256-abc")
    assert not is_digest_like("release-" + "0" * 10)


def test_immutable_globs() -> None:
    r = rules(immutable=["v*", "{stable,lts}-*"])
    assert is_immutable(r, "v1.2.3")
    assert is_immutable(r, "lts-2024")
    assert not is_immutable(r, "latest")
    assert not is_immutable(r, "V1")
    assert not is_immutable(TagRules(), "v1")


# --------------------------------------------------------------------------- properties

TAG_POOL = st.sampled_from(
    [
        "v1.0.0",
        "v1.2.0",
        "1.2.0",
        "v1.3.0-rc1",
        "v2.0.0",
        "2.1.0",
        "latest",
        "stable",
        "main",
        "dev-1",
        FALLBACK,
        COSIGN_SIG,
    ]
)
DENY_POOL = st.sampled_from([r".*-rc\d*", "latest", r"v2\..*", "dev-.*", "main"])


@settings(max_examples=200, deadline=None)
@given(
    tags=st.lists(TAG_POOL, max_size=15),
    latest=st.none() | st.integers(min_value=1, max_value=4),
    deny=st.lists(DENY_POOL, max_size=2),
    include=st.lists(st.sampled_from(["stable", "v1.0.0", "pinned"]), max_size=2, unique=True),
    semver=st.none() | st.sampled_from([">=1.0.0", "<2.0.0", "^1.2.0"]),
)
def test_selection_properties(
    tags: list[str], latest: int | None, deny: list[str], include: list[str], semver: str | None
) -> None:
    fields: dict[str, Any] = {"deny": list(dict.fromkeys(deny)), "include": include}
    if latest is not None:
        fields["latest"] = latest
    if semver is not None:
        fields["semver"] = semver
    r = rules(**fields)
    chosen = select_tags(r, tags)
    selected = list(chosen.selected)
    filtered = [t for t in selected if t not in include]
    # every include is selected; nothing twice
    assert all(t in selected for t in include)
    assert len(selected) == len(set(selected))
    # latest never keeps more than N beyond the includes
    if latest is not None:
        assert len(filtered) <= latest
    # a denied tag appears only through include
    denied = {t for t in tags for p in r.deny if p.fullmatch(t)}
    assert not (denied & set(filtered))
    # digest-like tags never appear
    assert FALLBACK not in selected and COSIGN_SIG not in selected
    # every selected tag was listed or included, and every listed tag has a decision
    assert set(selected) <= set(tags) | set(include)
    assert {d.tag for d in chosen.decisions} == set(tags) | set(include)
    assert all(d.selected == (d.tag in selected) for d in chosen.decisions)
    # with latest, what is kept is newer than anything dropped for rank
    if latest is not None:
        kept = [semver_of(t) for t in filtered]
        for d in chosen.decisions:
            if d.reason.startswith("not among the newest"):
                assert all(v is not None and v >= semver_of(d.tag) for v in kept)


# --------------------------------------------------------------------------- repositories


CATALOG = [
    "team/api",
    "team/web",
    "team/legacy-db",
    "team/legacy-keep",
    "team/sub/tool",
    "other/api",
    "team",
]


def test_repository_patterns_apply_in_order_last_match_wins() -> None:
    chosen = select_repositories(["team/*", "!team/legacy-*", "team/legacy-keep"], CATALOG)
    assert chosen.selected == ("team/api", "team/web", "team/legacy-keep")
    got = {d.repository: d.reason for d in chosen.decisions}
    assert got == {
        "team/api": "selected by 'team/*'",
        "team/web": "selected by 'team/*'",
        "team/legacy-db": "excluded by '!team/legacy-*'",
        "team/legacy-keep": "selected by 'team/legacy-keep'",
        "team/sub/tool": "matches no pattern",
        "other/api": "matches no pattern",
        "team": "matches no pattern",
    }


def test_a_later_negation_wins_over_an_earlier_selection() -> None:
    chosen = select_repositories(["team/**", "!team/sub/**"], CATALOG)
    assert chosen.selected == ("team/api", "team/web", "team/legacy-db", "team/legacy-keep")


@pytest.mark.parametrize(
    ("pattern", "repository", "matches"),
    [
        ("team/*", "team/api", True),
        ("team/*", "team/sub/tool", False),  # '*' never crosses '/'
        ("*", "team/api", False),
        ("team/**", "team/sub/tool", True),
        ("team/**", "team", False),
        ("**/api", "team/api", True),
        ("**/api", "api", True),
        ("team/**/tool", "team/tool", True),
        ("team/{api,web}", "team/web", True),
        ("team/[aw]*", "team/web", True),
        ("team/?pi", "team/api", True),
        ("team*", "team/api", False),
    ],
)
def test_repository_globs(pattern: str, repository: str, matches: bool) -> None:
    assert repository_matches(pattern, repository) is matches


# --------------------------------------------------------------------------- destinations


def test_registry_templates_map_each_repository() -> None:
    assert map_destination("prod.example.com/mirror/{repository}", "team/api") == parse_repository(
        "prod.example.com/mirror/team/api"
    )
    assert map_destination("prod.example.com/flat/{name}", "team/sub/api") == parse_repository(
        "prod.example.com/flat/api"
    )
    assert map_destination("prod.example.com/fixed", "team/api") == parse_repository(
        "prod.example.com/fixed"
    )


def test_a_layout_without_fields_is_shared_and_keeps_full_names() -> None:
    ref = map_destination("ocidir:///srv/airgap", "team/api")
    assert ref == Reference("ocidir", "", "team/api", None, None, "/srv/airgap")
    assert ref.location == "ocidir:///srv/airgap"
    assert is_shared_layout("ocidir:///srv/airgap")
    assert describe_destination(ref, "v1") == "ocidir:///srv/airgap (team/api:v1)"


def test_a_layout_with_a_field_is_one_layout_per_repository() -> None:
    ref = map_destination("ocidir:///srv/airgap/{name}", "team/api")
    assert ref == Reference("ocidir", "", "", None, None, "/srv/airgap/api")
    assert not is_shared_layout("ocidir:///srv/airgap/{name}")
    assert describe_destination(ref, "v1") == "ocidir:///srv/airgap/api:v1"


def test_two_repositories_landing_in_one_destination_are_refused() -> None:
    mapped = map_repositories(["c.io/{repository}", "ocidir:///l"], ["a/api", "b/api"])
    assert mapped["b/api"][0] == parse_repository("c.io/b/api")
    with pytest.raises(ConfigError) as info:
        map_repositories(["c.io/{name}"], ["a/api", "b/api"])
    assert str(info.value) == (
        "repositories 'a/api' and 'b/api' both map to c.io/api (through 'c.io/{name}'): "
        "use {repository} rather than {name}, or exclude one of them"
    )


def test_a_rendered_destination_that_is_not_a_reference_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="repository name is longer than 255 characters"):
        map_destination("c.io/" + "x" * 250 + "/{repository}", "team/api")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "c.io/{repo}",
            "unknown template field {repo} in 'c.io/{repo}': allowed: {repository}, {name}",
        ),
        ("c.io/{}", "unknown template field {} in 'c.io/{}'"),
        ("c.io/{0}", "unknown template field {0}"),
        ("c.io/{name:>9}", "takes no format or conversion"),
        ("c.io/{name", "malformed template 'c.io/{name'"),
        ("{name}.io/x", "template fields belong in the repository path, not the host"),
        ("c.io/{{name}}", "invalid reference"),
        ("c.io/x:v1", "expected a repository, without a tag"),
        ("c.io", "names a registry but no repository"),
        ("", "must be a repository"),
    ],
)
def test_destination_template_errors(template: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        check_destination_template(template)
    assert message in str(info.value)


def test_relative_layout_paths_are_anchored_at_the_config_directory() -> None:
    assert check_destination_template("ocidir://./out/{name}", base_dir="/etc/sync") == (
        "ocidir:///etc/sync/out/{name}"
    )
    assert check_destination_template("ocidir:///abs", base_dir="/etc/sync") == "ocidir:///abs"
    assert check_destination_template("c.io/{name}", base_dir="/etc/sync") == "c.io/{name}"


def test_template_fields() -> None:
    assert template_fields("c.io/{repository}/{name}", ("repository", "name")) == (
        "repository",
        "name",
    )
    assert template_fields("c.io/x", ("repository",)) == ()


def test_backup_tags() -> None:
    assert check_backup_template("{tag}-previous") == "{tag}-previous"
    assert backup_tag("{tag}-previous", "v1.2.3") == "v1.2.3-previous"
    with pytest.raises(ValueError, match=re.escape("must contain {tag}")):
        check_backup_template("previous")
    with pytest.raises(ValueError, match="does not give a valid tag"):
        check_backup_template("-{tag}")
    with pytest.raises(ConfigError, match="not a valid tag"):
        backup_tag("{tag}-previous", "v" * 120)
