"""The graphs a fault schedule puts at its source, built from the schedule's seed.

Every byte comes from a :class:`random.Random` seeded by the schedule, so a
seed builds the same digests every time (which request is the n-th one, and
where a byte offset falls, stay the same).  Built through the Target API of a
real registry (:class:`~tests.integration.graphs.GraphBuilder`).
"""

from __future__ import annotations

import json
import random
from typing import Any

from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.targets.base import Target
from tests.integration.graphs import (
    ATTESTATION_TYPE,
    DOCKER_REF_DIGEST,
    DOCKER_REF_TYPE,
    SBOM_TYPE,
    SIGNATURE_TYPE,
    GraphBuilder,
)

KiB = 1024
MiB = 1024 * KiB
UNKNOWN_CONFIG = "application/vnd.example.fault-suite.config.v7+json"
UNKNOWN_LAYER = "application/vnd.example.fault-suite.payload.v7+octets"
UNKNOWN_ARTIFACT = "application/vnd.example.fault-suite.unknown.v7"


def _compact(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class SeededGraphs:
    """Builds the graph kinds of :data:`tests.faults.schedule.GRAPH_KINDS` in one repository."""

    def __init__(self, target: Target, repository: str, rng: random.Random) -> None:
        self.b = GraphBuilder(target, repository)
        self.rng = rng

    def _bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    async def image(
        self,
        tags: list[str],
        *,
        layers: int = 2,
        sizes: tuple[int, int] = (200, 3000),
        docker: bool = False,
        platform: tuple[str, str] = ("linux", "amd64"),
        pretty: bool = False,
    ) -> Descriptor:
        """An image of random layers (Docker schema 2 with ``docker``)."""
        config_type = mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG
        layer_type = mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP
        config = await self.b.blob(
            _compact(
                {"architecture": platform[1], "os": platform[0], "salt": self._bytes(8).hex()}
            ),
            config_type,
        )
        descs = [
            await self.b.blob(self._bytes(self.rng.randint(*sizes)), layer_type)
            for _ in range(layers)
        ]
        media_type = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
        doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.to_json(),
            "layers": [d.to_json() for d in descs],
        }
        raw = (json.dumps(doc, indent=3) + "\n").encode() if pretty else _compact(doc)
        return await self.b.manifest(raw, media_type, tags)

    async def referrer(
        self, subject: Descriptor, artifact_type: str, size: int = 300
    ) -> Descriptor:
        """An artifact whose subject is ``subject``."""
        return await self.b.referrer(subject, artifact_type, self._bytes(size))

    async def signed(self, tag: str) -> Descriptor:
        """Image, signature, SBOM, SBOM signature."""
        image = await self.image([tag])
        await self.referrer(image, SIGNATURE_TYPE)
        sbom = await self.referrer(image, SBOM_TYPE, 2000)
        await self.referrer(sbom, SIGNATURE_TYPE)
        return image

    async def deep(self, tag: str) -> Descriptor:
        """An image with a chain of four referrers, each on the one before, and siblings."""
        image = await self.image([tag], layers=1)
        node = image
        for level in range(4):
            node = await self.referrer(node, f"application/vnd.example.level{level}")
            if level % 2 == 0:
                await self.referrer(node, SIGNATURE_TYPE, 100)
        return image

    async def multiarch(self, tag: str) -> Descriptor:
        """An OCI index of two platforms with attestation manifests, signed."""
        children: list[tuple[Descriptor, dict[str, Any] | None, dict[str, str] | None]] = []
        images = []
        for arch in ("amd64", "arm64"):
            img = await self.image([], layers=1, platform=("linux", arch))
            images.append(img)
            children.append((img, {"architecture": arch, "os": "linux"}, None))
        for img in images:
            layer = await self.b.blob(_compact({"of": img.digest}), ATTESTATION_TYPE)
            config = await self.b.blob(_compact({"architecture": "unknown", "os": "unknown"}))
            raw = _compact(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_MANIFEST,
                    "config": Descriptor(mt.OCI_CONFIG, config.digest, config.size).to_json(),
                    "layers": [layer.to_json()],
                }
            )
            att = await self.b.manifest(raw, mt.OCI_MANIFEST)
            children.append(
                (
                    att,
                    {"architecture": "unknown", "os": "unknown"},
                    {DOCKER_REF_TYPE: "attestation-manifest", DOCKER_REF_DIGEST: img.digest},
                )
            )
        index = await self.b.index(children, tags=[tag])
        await self.referrer(index, SIGNATURE_TYPE)
        await self.referrer(images[0], SBOM_TYPE)
        return index

    async def docker_list(self, tag: str) -> Descriptor:
        """A Docker manifest list of two Docker images, in indented JSON."""
        children: list[tuple[Descriptor, dict[str, Any] | None, dict[str, str] | None]] = []
        for arch in ("amd64", "arm64"):
            img = await self.image([], layers=2, docker=True, platform=("linux", arch), pretty=True)
            children.append((img, {"architecture": arch, "os": "linux"}, None))
        return await self.b.index(children, tags=[tag], docker=True, pretty=True)

    async def large(self, tag: str) -> Descriptor:
        """An image with one or two layers of 1.2-2.5 MiB (several chunks each), signed."""
        image = await self.image(
            [tag], layers=self.rng.choice((1, 2)), sizes=(1200 * KiB, 2500 * KiB)
        )
        await self.referrer(image, SIGNATURE_TYPE)
        return image

    async def unknown_types(self, tag: str) -> Descriptor:
        """An artifact of unknown config and layer media types, with an unknown referrer."""
        config = await self.b.blob(_compact({"what": self._bytes(6).hex()}), UNKNOWN_CONFIG)
        layer = await self.b.blob(self._bytes(5000), UNKNOWN_LAYER)
        raw = (
            b'{ "schemaVersion" : 2,\n  "mediaType": "application/vnd.oci.image.manifest.v1+json",'
            + b'\n  "artifactType": "'
            + UNKNOWN_ARTIFACT.encode()
            + b'",\n  "config": '
            + _compact(config.to_json())
            + b',\n  "layers": ['
            + _compact(layer.to_json())
            + b'],\n  "annotations": {"x-unknown-key": "\\u00e9t\\u00e9"}\n}\n'
        )
        root = await self.b.manifest(raw, mt.OCI_MANIFEST, [tag], artifact_type=UNKNOWN_ARTIFACT)
        await self.referrer(root, UNKNOWN_ARTIFACT + ".note")
        return root

    async def artifact_index(self, tag: str) -> Descriptor:
        """An image whose referrer is an index with ``artifactType`` and ``subject``."""
        image = await self.image([tag], layers=1)
        members: list[tuple[Descriptor, dict[str, Any] | None, dict[str, str] | None]] = []
        empty = await self.b.blob(mt.EMPTY_JSON, mt.OCI_EMPTY)
        for i in range(2):
            layer = await self.b.blob(self._bytes(40), "application/octet-stream")
            raw = _compact(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_MANIFEST,
                    "artifactType": f"application/vnd.example.bundle.part{i}",
                    "config": empty.to_json(),
                    "layers": [layer.to_json()],
                }
            )
            members.append((await self.b.manifest(raw, mt.OCI_MANIFEST), None, None))
        await self.b.index(members, artifact_type="application/vnd.example.bundle", subject=image)
        return image

    async def build(self, kind: str, tag: str) -> Descriptor:
        """Build a graph of ``kind`` tagged ``tag``; its root."""
        builder = getattr(self, kind)
        root: Descriptor = await builder(tag)
        return root
