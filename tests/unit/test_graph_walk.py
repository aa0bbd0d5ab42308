"""BFS discovery over a real OCI layout: order, dedup, filters, cycles."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from replicator.graph.filters import GraphFilter
from replicator.graph.walk import snapshot_graph, walk_graph
from replicator.oci import mediatype as mt
from replicator.oci.reference import referrers_tag
from replicator.targets.ocilayout import OCILayoutTarget
from tests.integration.graphs import SBOM_TYPE, GraphBuilder


def test_walk_is_breadth_first_with_depths_and_relations(tmp_path: Path) -> None:
    async def main() -> None:
        t = OCILayoutTarget(tmp_path, create=True)
        g = GraphBuilder(t, "")
        index, images = await g.multiarch("w", tags=["v1"], attestations=False)
        sig = await g.referrer(images[0], "sig")
        sig_sig = await g.referrer(sig, "sig")
        nodes = [n async for n in walk_graph(t, "", "v1")]
        order = [n.descriptor.digest for n in nodes]
        assert order[0] == index.digest
        assert set(order[1:3]) == {i.digest for i in images}
        assert order[3:] == [sig.digest, sig_sig.digest]
        by = {n.descriptor.digest: n for n in nodes}
        assert by[sig.digest].depth == 1 and by[sig.digest].relation == "referrer"
        assert by[sig_sig.digest].depth == 2 and by[sig_sig.digest].parent == sig.digest
        shallow = [n async for n in walk_graph(t, "", "v1", GraphFilter(max_depth=1))]
        assert sig_sig.digest not in {n.descriptor.digest for n in shallow}
        await t.aclose()

    asyncio.run(main())


def test_walk_terminates_on_cycles_and_reports_bogus_entries(tmp_path: Path) -> None:
    async def main() -> None:
        t = OCILayoutTarget(tmp_path, create=True)
        g = GraphBuilder(t, "")
        signed = await g.signed_image("c", tags=["v1"])
        bogus = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_INDEX,
                "manifests": [signed.image.to_json(), signed.sbom.to_json()],
            }
        ).encode()
        await g.manifest(bogus, mt.OCI_INDEX, tags=[referrers_tag(signed.sbom.digest)])
        snap = await snapshot_graph(t, "", "v1")
        assert set(snap.manifests) == {
            signed.image.digest,
            signed.signature.digest,
            signed.sbom.digest,
            signed.sbom_signature.digest,
        }
        assert snap.warnings
        only_sbom = await snapshot_graph(t, "", "v1", GraphFilter(include_types=(SBOM_TYPE,)))
        assert set(only_sbom.manifests) == {signed.image.digest, signed.sbom.digest}
        await t.aclose()

    asyncio.run(main())
