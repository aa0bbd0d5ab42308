"""Graph filters: referrer artifact-type globs, depth, platform selection."""

from __future__ import annotations

from replicator.graph.filters import GraphFilter
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor, Platform

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
D4 = "sha256:" + "4" * 64


def _ref(artifact_type: str | None) -> Descriptor:
    return Descriptor(mt.OCI_MANIFEST, D1, 10, artifact_type=artifact_type)


def test_artifact_type_globs_include_and_exclude() -> None:
    f = GraphFilter(include_types=("application/vnd.*sig*",), exclude_types=("*cosign*",))
    assert f.accepts_referrer(_ref("application/vnd.notary.signature"))
    assert not f.accepts_referrer(_ref("application/vnd.dev.cosign.sig"))
    assert not f.accepts_referrer(_ref("sbom/example"))
    assert not f.accepts_referrer(_ref(None))
    assert GraphFilter().accepts_referrer(_ref(None))
    assert not GraphFilter(exclude_types=("sbom/*",)).accepts_referrer(_ref("sbom/example"))


def test_depth_limits_referrer_levels() -> None:
    assert GraphFilter(max_depth=None).follows_referrers_at(50)
    f = GraphFilter(max_depth=2)
    assert f.follows_referrers_at(0) and f.follows_referrers_at(1)
    assert not f.follows_referrers_at(2)
    assert not GraphFilter(referrers=False).follows_referrers_at(0)


def test_platform_selection_keeps_matching_children_and_their_attestations() -> None:
    amd = Descriptor(mt.OCI_MANIFEST, D1, 1, platform=Platform("linux", "amd64"))
    arm = Descriptor(mt.OCI_MANIFEST, D2, 1, platform=Platform("linux", "arm64", "v8"))
    att_amd = Descriptor(
        mt.OCI_MANIFEST,
        D3,
        1,
        platform=Platform("unknown", "unknown"),
        annotations={
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": D1,
        },
    )
    att_arm = Descriptor(
        mt.OCI_MANIFEST,
        D4,
        1,
        platform=Platform("unknown", "unknown"),
        annotations={
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": D2,
        },
    )
    children = [amd, arm, att_amd, att_arm]
    assert GraphFilter().select_platforms(children) == children
    only_amd = GraphFilter(platforms=(Platform.parse("linux/amd64"),))
    assert only_amd.select_platforms(children) == [amd, att_amd]
    arm_v8 = GraphFilter(platforms=(Platform.parse("linux/arm64/v8"),))
    assert arm_v8.select_platforms(children) == [arm, att_arm]
    # unknown/unknown never selects attestations on its own
    unknown = GraphFilter(platforms=(Platform.parse("unknown/unknown"),))
    assert unknown.select_platforms(children) == []


def test_an_exact_artifact_type_is_a_glob_matching_itself() -> None:
    """discover --artifact-type and copy --artifact-type share this rule."""
    for kind in ("application/spdx+json", "application/vnd.cncf.notary.signature", "sbom/example"):
        f = GraphFilter(include_types=(kind,))
        assert f.accepts_referrer(_ref(kind))
        assert not f.accepts_referrer(_ref(kind + ".v2"))
        assert not f.accepts_referrer(_ref(kind.upper()))  # case matters, as in media types
        assert not f.accepts_referrer(_ref(None))
