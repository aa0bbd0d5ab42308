"""BFS discovery over a real OCI layout: order, dedup, filters, cycles; referrer admission."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

from replicator.graph.filters import GraphFilter
from replicator.graph.rules import (
    admit_referrers,
    foreign_subject_warning,
    missing_referrer_warning,
    self_reference_warning,
)
from replicator.graph.walk import snapshot_graph, walk_graph
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import build_index
from replicator.oci.reference import referrers_tag
from replicator.targets.ocilayout import OCILayoutTarget
from tests.integration.graphs import SBOM_TYPE, SIGNATURE_TYPE, GraphBuilder, SignedImage


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


# -------------------------------------------------------------- admission rules


class CountingLayout(OCILayoutTarget):
    """A layout that counts the manifests read by digest (to see what admission reads)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, create=True)
        self.reads: list[str] = []

    async def fetch_manifest(
        self, repository: str, reference: str | Descriptor
    ) -> tuple[Descriptor, bytes]:
        self.reads.append(reference.digest if isinstance(reference, Descriptor) else reference)
        return await super().fetch_manifest(repository, reference)


def _forged_listing(
    signed: SignedImage, other: Descriptor
) -> tuple[list[Descriptor], Descriptor, Descriptor]:
    """A listing of the image's referrers with every kind of claim that is not one."""
    missing = Descriptor(mt.OCI_MANIFEST, "sha256:" + "e" * 64, 10, artifact_type=SIGNATURE_TYPE)
    blob = Descriptor(mt.OCI_LAYER, "sha256:" + "b" * 64, 10)
    foreign = replace(other, artifact_type=SIGNATURE_TYPE)
    listed = [
        signed.signature,
        signed.image,  # itself
        foreign,  # an image that names no subject
        signed.sbom_signature,  # a genuine referrer, of another subject
        missing,
        blob,  # not a manifest
        signed.sbom,
        signed.signature,  # twice
    ]
    return listed, foreign, missing


def test_admission_keeps_only_manifests_that_name_the_subject(tmp_path: Path) -> None:
    async def main() -> None:
        t = CountingLayout(tmp_path)
        g = GraphBuilder(t, "")
        signed = await g.signed_image("s", tags=["v1"])
        other = await g.image("o", tags=["o"])
        listed, foreign, missing = _forged_listing(signed, other)
        subject = signed.image.digest
        t.reads.clear()
        got = await admit_referrers(t, "", subject, listed, trusted=False)
        assert [a.descriptor.digest for a in got.admitted] == [
            signed.signature.digest,
            signed.sbom.digest,
        ]
        assert all(a.raw is not None for a in got.admitted)
        assert [d.digest for d in got.foreign] == [foreign.digest, signed.sbom_signature.digest]
        assert [d.digest for d in got.missing] == [missing.digest]
        assert got.warnings == [
            self_reference_warning(subject),
            foreign_subject_warning(foreign.digest, subject),
            foreign_subject_warning(signed.sbom_signature.digest, subject),
            missing_referrer_warning(missing.digest, subject),
        ]
        assert sorted(t.reads) == sorted(
            d.digest
            for d in (signed.signature, foreign, signed.sbom_signature, missing, signed.sbom)
        )

        # The filter applies before any read; what the caller already has is not read.
        t.reads.clear()
        only_sboms = await admit_referrers(
            t,
            "",
            subject,
            listed,
            trusted=False,
            accept=GraphFilter(include_types=("*spdx*",)).accepts_referrer,
            skip={signed.sbom.digest},
        )
        assert only_sboms.admitted == [] and only_sboms.filtered == 4
        assert t.reads == []

        # A trusted listing (the referrers API) is admitted as listed, unread.
        t.reads.clear()
        trusted = await admit_referrers(t, "", subject, listed, trusted=True)
        assert [a.descriptor.digest for a in trusted.admitted] == [
            signed.signature.digest,
            foreign.digest,
            signed.sbom_signature.digest,
            missing.digest,
            signed.sbom.digest,
        ]
        assert t.reads == [] and all(a.raw is None for a in trusted.admitted)
        await t.aclose()

    asyncio.run(main())


def test_admission_judges_an_entry_listed_without_type_by_its_manifest(tmp_path: Path) -> None:
    async def main() -> None:
        t = CountingLayout(tmp_path)
        g = GraphBuilder(t, "")
        signed = await g.signed_image("s", tags=["v1"])
        untyped = [replace(signed.sbom, artifact_type=None), signed.signature]
        accept = GraphFilter(include_types=(SBOM_TYPE,)).accepts_referrer
        for trusted in (False, True):
            got = await admit_referrers(
                t, "", signed.image.digest, untyped, trusted=trusted, accept=accept
            )
            assert [a.descriptor for a in got.admitted] == [signed.sbom]
            assert got.filtered == 1
        await t.aclose()

    asyncio.run(main())


def test_walk_skips_what_a_forged_listing_names(tmp_path: Path) -> None:
    async def main() -> None:
        t = OCILayoutTarget(tmp_path, create=True)
        g = GraphBuilder(t, "")
        signed = await g.signed_image("s", tags=["v1"])
        other = await g.image("o", tags=["o"])
        listed, foreign, missing = _forged_listing(signed, other)
        await g.manifest(
            build_index([d for d in listed if d.media_type != mt.OCI_LAYER]),
            mt.OCI_INDEX,
            tags=[referrers_tag(signed.image.digest)],
        )
        snap = await snapshot_graph(t, "", "v1")
        assert set(snap.manifests) == {
            signed.image.digest,
            signed.signature.digest,
            signed.sbom.digest,
            signed.sbom_signature.digest,
        }
        assert snap.referrers[signed.image.digest] == {signed.signature.digest, signed.sbom.digest}
        assert foreign_subject_warning(foreign.digest, signed.image.digest) in snap.warnings
        assert missing_referrer_warning(missing.digest, signed.image.digest) in snap.warnings
        await t.aclose()

    asyncio.run(main())
