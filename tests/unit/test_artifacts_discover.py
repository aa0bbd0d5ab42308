"""Rendering of referrer trees (tree / json / table) and the deletion order."""

from __future__ import annotations

import json

from replicator.artifacts.delete import deletion_order
from replicator.artifacts.discover import ReferrerNode, render_json, render_table, render_tree
from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor


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
