"""Builders of test graphs through the Target API, and graph comparison.

Reusable by tests and benchmarks: everything goes through a
:class:`~replicator.targets.base.Target` (registry or OCI layout), so the same
graphs can be built anywhere.

* :class:`GraphBuilder` pushes blobs, images, indexes and referrers into one
  repository of a target.  Manifests are written by hand (not through the
  product's builders) so a test can choose their exact bytes: Docker schema2
  with odd key order and whitespace, OCI indexes with Docker-style attestation
  manifests, artifact indexes with a subject...
* :func:`build_world` makes a :class:`World`: many repositories and tags, each
  image with a signature, an SBOM and a signature of the SBOM, sharing a base
  layer across repositories.
* :func:`assert_same_graph` walks a graph at the source and at the destination
  and asserts they are identical digest for digest, manifest bytes included,
  with every blob present at the destination.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from replicator.graph.filters import GraphFilter
from replicator.graph.walk import GraphSnapshot, snapshot_graph
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.targets.base import Target

SIGNATURE_TYPE = "application/vnd.example.signature.v1+json"
SBOM_TYPE = "application/spdx+json"
ATTESTATION_TYPE = "application/vnd.in-toto+json"
DOCKER_REF_TYPE = "vnd.docker.reference.type"
DOCKER_REF_DIGEST = "vnd.docker.reference.digest"


def _opener(data: bytes) -> Any:
    async def open_(offset: int) -> AsyncIterator[bytes]:
        view = data[offset:]
        for i in range(0, len(view), 64 * 1024):
            yield view[i : i + 64 * 1024]

    return open_


def _compact(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _desc_json(d: Descriptor) -> dict[str, Any]:
    return d.to_json()


class GraphBuilder:
    """Pushes content into ``repository`` of ``target``; every call returns the descriptor."""

    def __init__(self, target: Target, repository: str) -> None:
        self.target = target
        self.repository = repository

    async def blob(
        self, data: bytes, media_type: str = mt.OCI_LAYER_GZIP, **extra: Any
    ) -> Descriptor:
        """Push a blob (no-op if present)."""
        desc = descriptor_for(data, media_type, **extra)
        if not await self.target.blob_exists(self.repository, desc):
            await self.target.push_blob(self.repository, desc, _opener(data))
        return desc

    async def manifest(
        self, raw: bytes, media_type: str, tags: Sequence[str] = (), **extra: Any
    ) -> Descriptor:
        """Push exact manifest bytes (by digest, then each tag)."""
        desc = descriptor_for(raw, media_type, **extra)
        await self.target.push_manifest(self.repository, desc, raw, tuple(tags))
        return desc

    async def image(
        self,
        name: str,
        *,
        layers: int = 2,
        layer_size: int = 256,
        shared_layers: Sequence[bytes] = (),
        tags: Sequence[str] = (),
        platform: tuple[str, str] | None = None,
        docker: bool = False,
        pretty: bool = False,
    ) -> Descriptor:
        """An image: a config and ``layers`` random layers (plus shared ones first).

        ``docker`` writes a Docker schema2 manifest; ``pretty`` writes it with
        indentation, extra whitespace and an unusual key order (its digest must
        survive a copy unchanged).
        """
        config_type = mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG
        layer_type = mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP
        os_, arch = platform or ("linux", "amd64")
        config = await self.blob(
            _compact({"architecture": arch, "os": os_, "name": name, "salt": os.urandom(8).hex()}),
            config_type,
        )
        layer_descs = [await self.blob(data, layer_type) for data in shared_layers]
        for _ in range(layers):
            layer_descs.append(await self.blob(os.urandom(layer_size), layer_type))
        media_type = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
        if pretty:
            body = (
                '{\n   "layers" : [\n'
                + ",\n".join(
                    f'      {{ "size": {d.size},  "digest" : "{d.digest}", "mediaType": "{d.media_type}" }}'
                    for d in layer_descs
                )
                + f'\n   ],\n  "config":{{"digest":"{config.digest}","mediaType":"{config.media_type}","size":{config.size}}},'
                + f'\n\t"mediaType" : "{media_type}",\n "schemaVersion":   2\n}}\n'
            )
            raw = body.encode()
        else:
            raw = _compact(
                {
                    "schemaVersion": 2,
                    "mediaType": media_type,
                    "config": _desc_json(config),
                    "layers": [_desc_json(d) for d in layer_descs],
                }
            )
        return await self.manifest(raw, media_type, tags)

    async def index(
        self,
        children: Sequence[tuple[Descriptor, dict[str, Any] | None, dict[str, str] | None]],
        *,
        tags: Sequence[str] = (),
        docker: bool = False,
        pretty: bool = False,
        artifact_type: str | None = None,
        subject: Descriptor | None = None,
    ) -> Descriptor:
        """An index (or Docker manifest list) of ``(descriptor, platform, annotations)``."""
        entries = []
        for desc, platform, notes in children:
            entry: dict[str, Any] = {
                "mediaType": desc.media_type,
                "digest": desc.digest,
                "size": desc.size,
            }
            if platform is not None:
                entry["platform"] = platform
            if notes:
                entry["annotations"] = notes
            entries.append(entry)
        media_type = mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
        if artifact_type:
            doc["artifactType"] = artifact_type
        doc["manifests"] = entries
        if subject is not None:
            doc["subject"] = _desc_json(subject)
        if pretty:
            raw = (json.dumps(dict(reversed(list(doc.items()))), indent=3) + "\n").encode()
        else:
            raw = _compact(doc)
        return await self.manifest(raw, media_type, tags, artifact_type=artifact_type)

    async def multiarch(
        self,
        name: str,
        *,
        tags: Sequence[str] = (),
        platforms: Sequence[tuple[str, str]] = (("linux", "amd64"), ("linux", "arm64")),
        attestations: bool = True,
        shared_layers: Sequence[bytes] = (),
    ) -> tuple[Descriptor, list[Descriptor]]:
        """A buildx-style OCI index: one image per platform plus attestation manifests.

        Returns the index and its image children (attestations not included).
        """
        children: list[tuple[Descriptor, dict[str, Any] | None, dict[str, str] | None]] = []
        images = []
        for os_, arch in platforms:
            img = await self.image(
                f"{name}-{arch}", platform=(os_, arch), shared_layers=shared_layers
            )
            images.append(img)
            children.append((img, {"architecture": arch, "os": os_}, None))
        if attestations:
            for img in images:
                att_layer = await self.blob(
                    _compact(
                        {"predicateType": "https://slsa.dev/provenance/v0.2", "of": img.digest}
                    ),
                    ATTESTATION_TYPE,
                )
                config = await self.blob(
                    _compact({"architecture": "unknown", "os": "unknown"}), mt.OCI_CONFIG
                )
                raw = _compact(
                    {
                        "schemaVersion": 2,
                        "mediaType": mt.OCI_MANIFEST,
                        "config": _desc_json(config),
                        "layers": [_desc_json(att_layer)],
                    }
                )
                att = await self.manifest(raw, mt.OCI_MANIFEST)
                children.append(
                    (
                        att,
                        {"architecture": "unknown", "os": "unknown"},
                        {DOCKER_REF_TYPE: "attestation-manifest", DOCKER_REF_DIGEST: img.digest},
                    )
                )
        index = await self.index(children, tags=tags)
        return index, images

    async def referrer(
        self,
        subject: Descriptor,
        artifact_type: str,
        payload: bytes | None = None,
        *,
        annotations: dict[str, str] | None = None,
    ) -> Descriptor:
        """An artifact manifest (image manifest, empty config) whose subject is ``subject``."""
        config = await self.blob(mt.EMPTY_JSON, mt.OCI_EMPTY)
        layer = await self.blob(
            payload if payload is not None else os.urandom(64), "application/octet-stream"
        )
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": _desc_json(config),
            "layers": [_desc_json(layer)],
            "subject": {
                "mediaType": subject.media_type,
                "digest": subject.digest,
                "size": subject.size,
            },
        }
        if annotations:
            doc["annotations"] = annotations
        return await self.manifest(_compact(doc), mt.OCI_MANIFEST, artifact_type=artifact_type)

    async def artifact_index(
        self, subject: Descriptor, artifact_type: str, parts: int = 2
    ) -> Descriptor:
        """An index with ``artifactType`` and a ``subject`` listing ``parts`` artifacts."""
        members = []
        for i in range(parts):
            config = await self.blob(mt.EMPTY_JSON, mt.OCI_EMPTY)
            layer = await self.blob(os.urandom(40), "application/octet-stream")
            raw = _compact(
                {
                    "schemaVersion": 2,
                    "mediaType": mt.OCI_MANIFEST,
                    "artifactType": f"{artifact_type}.part{i}",
                    "config": _desc_json(config),
                    "layers": [_desc_json(layer)],
                }
            )
            members.append((await self.manifest(raw, mt.OCI_MANIFEST), None, None))
        return await self.index(members, artifact_type=artifact_type, subject=subject)

    async def signed_image(
        self,
        name: str,
        *,
        tags: Sequence[str] = (),
        shared_layers: Sequence[bytes] = (),
        layers: int = 2,
        layer_size: int = 256,
    ) -> SignedImage:
        """The seed walkthrough's graph: image, signature, SBOM, SBOM signature."""
        image = await self.image(
            name, tags=tags, shared_layers=shared_layers, layers=layers, layer_size=layer_size
        )
        signature = await self.referrer(image, SIGNATURE_TYPE)
        sbom = await self.referrer(
            image, SBOM_TYPE, _compact({"spdxVersion": "SPDX-2.3", "name": name})
        )
        sbom_signature = await self.referrer(sbom, SIGNATURE_TYPE)
        return SignedImage(image, signature, sbom, sbom_signature)


@dataclass(frozen=True, slots=True)
class SignedImage:
    """An image with a signature, an SBOM and the SBOM's signature."""

    image: Descriptor
    signature: Descriptor
    sbom: Descriptor
    sbom_signature: Descriptor

    @property
    def manifests(self) -> int:
        """Manifests in the graph."""
        return 4


@dataclass(slots=True)
class World:
    """Many repositories and tags of signed images, sharing a base layer.

    ``roots`` lists ``(repository, tag, image)``; ``blobs`` the distinct blob
    digests of the whole world.
    """

    target: Target
    prefix: str
    roots: list[tuple[str, str, SignedImage]] = field(default_factory=list)
    blobs: set[str] = field(default_factory=set)
    base_layer: bytes = b""

    @property
    def repositories(self) -> list[str]:
        """The distinct repositories, in creation order."""
        return list(dict.fromkeys(r for r, _, _ in self.roots))


async def build_world(
    target: Target,
    prefix: str,
    *,
    repositories: int = 3,
    tags: int = 2,
    layers: int = 2,
    layer_size: int = 1024,
) -> World:
    """Build ``repositories`` x ``tags`` signed images under ``prefix/repoN``.

    Every image shares one base layer (blobs shared across repositories), has
    ``layers`` random layers of ``layer_size`` bytes, a signature, an SBOM and an
    SBOM signature (referrers two levels deep).
    """
    base = hashlib.sha256(prefix.encode()).digest() * 64
    world = World(target, prefix, base_layer=base)
    # The shared base layer first, so the repositories built in parallel below
    # do not race to upload it.
    await GraphBuilder(target, f"{prefix}/repo0").blob(base)
    built: dict[int, list[tuple[str, str, SignedImage]]] = {}

    async def build_repo(r: int) -> None:
        repo = f"{prefix}/repo{r}"
        builder = GraphBuilder(target, repo)
        built[r] = []
        for t in range(tags):
            tag = f"v{t}"
            signed = await builder.signed_image(
                f"{repo}:{tag}",
                tags=[tag],
                shared_layers=[base],
                layers=layers,
                layer_size=layer_size,
            )
            built[r].append((repo, tag, signed))

    async with anyio.create_task_group() as tg:
        for r in range(repositories):
            tg.start_soon(build_repo, r)
    for r in range(repositories):
        world.roots.extend(built[r])
    for repo, tag, _ in world.roots:
        snap = await snapshot_graph(target, repo, tag)
        world.blobs.update(snap.blobs)
    return world


async def assert_same_graph(
    src: Target,
    src_repo: str,
    src_ref: str | Descriptor,
    dst: Target,
    dst_repo: str,
    dst_ref: str | Descriptor,
    flt: GraphFilter | None = None,
) -> GraphSnapshot:
    """Assert both graphs are identical (manifest bytes, blobs, referrer edges).

    Every blob of the source graph must exist at the destination.  Returns the
    source snapshot.
    """
    a = await snapshot_graph(src, src_repo, src_ref, flt)
    b = await snapshot_graph(dst, dst_repo, dst_ref, flt)
    assert set(a.manifests) == set(b.manifests), (
        f"manifests differ: missing {set(a.manifests) - set(b.manifests)}, "
        f"extra {set(b.manifests) - set(a.manifests)}"
    )
    for digest, raw in a.manifests.items():
        assert b.manifests[digest] == raw, f"bytes of {digest} differ"
    assert a.referrers == b.referrers
    assert set(a.blobs) == set(b.blobs)
    for blob in a.blobs.values():
        assert await dst.blob_exists(dst_repo, blob), f"blob {blob.digest} missing at destination"
    return a
