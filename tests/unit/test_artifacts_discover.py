"""Referrer trees: rendering (tree / json / table), admission on a layout, deletion order."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

from replicator.artifacts.delete import (
    DeleteEvent,
    _InOrder,
    _steps,
    deletion_order,
    execute_delete,
    left_in_place_note,
    plan_delete,
)
from replicator.artifacts.discover import (
    ReferrerNode,
    discover_graph,
    discover_referrers,
    render_json,
    render_table,
    render_tree,
)
from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import build_index, parse_manifest
from replicator.oci.reference import referrers_tag
from replicator.targets.ocilayout import OCILayoutTarget
from tests.integration.graphs import SBOM_TYPE, SIGNATURE_TYPE, GraphBuilder, SignedImage


def d(n: int, atype: str | None, **annotations: str) -> Descriptor:
    return Descriptor(
        mediatype.OCI_MANIFEST,
        f"sha256:{n:064x}",
        100 + n,
        annotations=annotations or None,
        artifact_type=atype,
    )


def seed_graph() -> list[ReferrerNode]:
    sbom = ReferrerNode(d(1, "sbom/example"), [ReferrerNode(d(2, "signature/example"))])
    return [
        sbom,
        ReferrerNode(d(3, "readme/example")),
        ReferrerNode(d(4, "signature/example")),
        ReferrerNode(d(5, "signature/example")),
    ]


def test_tree_matches_oras_shape() -> None:
    nodes = sorted(seed_graph(), key=lambda n: (n.artifact_type, n.descriptor.digest))
    text = render_tree("127.0.0.1:5000/net-monitor:v1", nodes)
    h = [f"sha256:{n:064x}" for n in range(6)]
    assert text == (
        "127.0.0.1:5000/net-monitor:v1\n"
        "├── readme/example\n"
        f"│   └── {h[3]}\n"
        "├── sbom/example\n"
        f"│   └── {h[1]}\n"
        "│       └── signature/example\n"
        f"│           └── {h[2]}\n"
        "└── signature/example\n"
        f"    ├── {h[4]}\n"
        f"    └── {h[5]}\n"
    )


def test_tree_without_referrers_is_just_the_root() -> None:
    assert render_tree("r/x:v1", []) == "r/x:v1\n"


def test_json_nests_referrers_under_manifests() -> None:
    doc = json.loads(render_json(seed_graph()))
    first = doc["manifests"][0]
    assert first["digest"] == f"sha256:{1:064x}"
    assert first["artifactType"] == "sbom/example"
    assert first["manifests"][0]["digest"] == f"sha256:{2:064x}"
    assert first["manifests"][0]["manifests"] == []
    assert len(doc["manifests"]) == 4


def test_table_lists_every_node_with_annotations() -> None:
    nodes = [ReferrerNode(d(7, "sig/x", b="2", a="1"), [ReferrerNode(d(8, "sig/y"))])]
    lines = render_table(nodes).splitlines()
    assert lines[0].split() == ["DIGEST", "ARTIFACT", "TYPE", "ANNOTATIONS"]
    assert lines[1].split() == [f"sha256:{7:064x}", "sig/x", "a=1,b=2"]
    assert lines[2].startswith(f"  sha256:{8:064x}") and lines[2].split()[1] == "sig/y"


def test_deletion_order_is_deepest_first_root_last() -> None:
    root = d(0, None)
    order = [x.digest[-1] for x in deletion_order(root, seed_graph())]
    assert order == ["2", "1", "3", "4", "5", "0"]


def test_events_are_reported_in_the_plans_order_whatever_order_steps_finish_in() -> None:
    root = d(0, None)
    steps = _steps(root, seed_graph())
    assert [s for s in steps if s[0] == "delete"] == [
        ("delete", x.digest) for x in deletion_order(root, seed_graph())
    ]
    seen: list[str] = []
    order = _InOrder(steps, lambda e: seen.append(f"{e.action} {e.descriptor.digest[-1]}"))
    finish = list(reversed(steps))
    for step in finish[:3]:
        order.done(step, [DeleteEvent("deleted", d(int(step[1][-1]), None))])
    assert seen == []  # each waits for the steps before it
    order.flush()
    assert seen == [f"deleted {s[1][-1]}" for s in steps[-3:]]


# -------------------------------------------------------------- forged listings, on a layout


def _forge(signed: SignedImage, other: Descriptor) -> bytes:
    """A fallback index for the image that lists, besides its referrers, what is not one."""
    return build_index(
        [
            signed.signature,
            signed.image,
            replace(other, artifact_type=SIGNATURE_TYPE),
            Descriptor(mediatype.OCI_MANIFEST, "sha256:" + "e" * 64, 9),
            signed.sbom,
        ]
    )


def test_discover_admits_only_manifests_naming_their_subject(tmp_path: Path) -> None:
    async def main() -> None:
        t = OCILayoutTarget(tmp_path, create=True)
        g = GraphBuilder(t, "")
        signed = await g.signed_image("s", tags=["v1"])
        other = await g.image("o", tags=["o"])
        tag = referrers_tag(signed.image.digest)
        await g.manifest(_forge(signed, other), mediatype.OCI_INDEX, tags=[tag])
        found = await discover_graph(t, "", signed.image)
        assert sorted(n.descriptor.digest for n in found.all_nodes()) == sorted(
            [signed.signature.digest, signed.sbom.digest, signed.sbom_signature.digest]
        )
        assert [(e.subject, e.descriptor.digest) for e in found.foreign] == [
            (signed.image.digest, other.digest)
        ]
        assert [e.descriptor.digest for e in found.missing] == ["sha256:" + "e" * 64]
        assert len(found.warnings) == 3 and not found.trusted

        # --artifact-type is a glob on the first level; an exact type matches itself.
        for pattern in ("*spdx*", SBOM_TYPE):
            nodes = await discover_referrers(t, "", signed.image, artifact_type=pattern)
            assert [n.descriptor.digest for n in nodes] == [signed.sbom.digest]
            assert [c.descriptor.digest for c in nodes[0].children] == [
                signed.sbom_signature.digest
            ]
        assert await discover_referrers(t, "", signed.image, artifact_type="spdx") == []
        await t.aclose()

    asyncio.run(main())


def test_delete_on_a_layout_leaves_a_forged_entry_and_its_index(tmp_path: Path) -> None:
    async def main() -> None:
        t = OCILayoutTarget(tmp_path, create=True)
        g = GraphBuilder(t, "")
        signed = await g.signed_image("s", tags=["v1"])
        other = await g.image("o", tags=["o"])
        tag = referrers_tag(signed.image.digest)
        forged = await g.manifest(_forge(signed, other), mediatype.OCI_INDEX, tags=[tag])
        plan = await plan_delete(t, "", signed.image)
        assert plan.tags == {"v1": signed.image.digest}
        assert plan.notes == [left_in_place_note(other.digest, signed.image.digest)]
        events: list[DeleteEvent] = []
        deleted = await execute_delete(t, plan, on_event=events.append)
        assert [x.digest for x in deleted] == [
            x.digest for x in deletion_order(signed.image, plan.discovery.nodes)
        ]
        assert await t.tags("") == ["o"]
        assert (await t.fetch_manifest("", other.digest))[0].digest == other.digest
        # The layout rewrote the index as referrers went; what is left names the foreign
        # image: that index is left in place too, only the tag went.
        kept = [e for e in events if e.action == "left_in_place"]
        assert len(kept) == 1 and kept[0].descriptor.digest != forged.digest
        _, raw = await t.fetch_manifest("", kept[0].descriptor.digest)
        assert other.digest in {c.digest for c in parse_manifest(raw).children()}
        assert [e.tag for e in events if e.action == "fallback_tag_removed"] == [tag]
        assert [e.tag for e in events if e.action == "tag_removed"] == ["v1"]
        assert events[-2:] == [
            DeleteEvent("deleted", signed.image),
            DeleteEvent("tag_removed", signed.image, tag="v1"),
        ]
        await t.aclose()

    asyncio.run(main())
