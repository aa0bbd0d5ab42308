"""The benchmark's content: a world of signed images and one large image.

Built once into a source registry through :class:`tests.integration.graphs.GraphBuilder`
(the same Target API the tests use).  Layers are real gzip streams (stored blocks
of random bytes) and configs are valid image configs with true ``diff_ids``, so
that skopeo copies them as they are: given bytes that are not gzip, skopeo would
compress them on the way to a registry, change their digests and do extra work
replicator never does.

The world (scenario a): ``repositories`` x ``tags_per_repo`` tags (12 x 5 = 60),
cycling through four kinds of root:

* ``oci``      single-platform OCI image manifest;
* ``docker``   Docker schema2 manifest;
* ``oci-idx``  OCI index of two platform images (amd64, arm64);
* ``docker-ml`` Docker manifest list of two schema2 platform images.

Every root has a signature, an SBOM and the SBOM's signature (OCI 1.1 ``subject``);
distribution 2.8 has no referrers API, so the pushes also maintain the fallback
tags ``sha256-<hex>``.  Every image has a config, one of four shared base layers
and five or six unique layers of 1-8 KiB.  With the default mix (25 + 25 + 5 + 5)
that is 380 manifests (80 image/index + 180 referrers + 120 fallback indexes) and
640 distinct blobs.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from replicator.errors import NotFoundError
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.manifest import parse_manifest
from replicator.targets.base import Target
from tests.integration.graphs import SBOM_TYPE, SIGNATURE_TYPE, GraphBuilder

KINDS: tuple[str, ...] = ("oci", "docker", "oci-idx", "docker-ml")
PLATFORMS: tuple[tuple[str, str], ...] = (("linux", "amd64"), ("linux", "arm64"))


def gzip_layer(raw: bytes) -> bytes:
    """``raw`` as a gzip stream of stored blocks (valid gzip, no compression work)."""
    return gzip.compress(raw, compresslevel=0, mtime=0)


def _compact(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Layer:
    """A layer's compressed bytes and the digest of its uncompressed content."""

    data: bytes
    diff_id: str

    @classmethod
    def random(cls, size: int, rng: random.Random) -> Layer:
        """A layer of ``size`` random bytes."""
        raw = rng.randbytes(size)
        return cls(gzip_layer(raw), "sha256:" + hashlib.sha256(raw).hexdigest())


@dataclass
class WorldSpec:
    """How many repositories, tags and which kinds (see module doc)."""

    prefix: str = "bench"
    repositories: int = 12
    tags_per_repo: int = 5
    #: Kind of each tag, by its global index modulo the length of this list.
    mix: tuple[str, ...] = (
        "oci",
        "docker",
        "oci",
        "docker",
        "oci",
        "docker",
        "oci-idx",
        "oci",
        "docker",
        "oci",
        "docker",
        "docker-ml",
    )
    base_layers: int = 4
    seed: int = 20261128


@dataclass
class BenchWorld:
    """What was built: the tags and the counts of the whole graph."""

    registry: str
    roots: list[tuple[str, str, str, str]] = field(default_factory=list)  # repo, tag, kind, digest
    manifests: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)
    blob_bytes: int = 0

    @property
    def repositories(self) -> list[str]:
        """Distinct repositories in creation order."""
        return list(dict.fromkeys(r for r, _, _, _ in self.roots))

    def summary(self) -> dict[str, Any]:
        """Counts for the report."""
        kinds: dict[str, int] = {}
        for _, _, kind, _ in self.roots:
            kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "tags": len(self.roots),
            "repositories": len(self.repositories),
            "kinds": kinds,
            "manifests": len(self.manifests),
            "blobs": len(self.blobs),
            "blob_bytes": self.blob_bytes,
        }


class _RepoBuilder:
    """Builds one repository's tags, recording manifests and blobs in the world."""

    def __init__(
        self, target: Target, repo: str, world: BenchWorld, bases: Sequence[Layer], seed: int
    ) -> None:
        self.g = GraphBuilder(target, repo)
        self.repo = repo
        self.world = world
        self.bases = bases
        self.rng = random.Random(seed)

    async def _blob(self, data: bytes, media_type: str) -> Descriptor:
        desc = await self.g.blob(data, media_type)
        if desc.digest not in self.world.blobs:
            self.world.blobs.add(desc.digest)
            self.world.blob_bytes += desc.size
        return desc

    async def _manifest(
        self, raw: bytes, media_type: str, tags: Sequence[str] = (), **extra: Any
    ) -> Descriptor:
        desc = await self.g.manifest(raw, media_type, tags, **extra)
        self.world.manifests.add(desc.digest)
        return desc

    async def image(
        self, name: str, *, docker: bool, platform: tuple[str, str], tags: Sequence[str] = ()
    ) -> Descriptor:
        """An image: config, one shared base layer, five or six unique layers."""
        layer_type = mt.DOCKER_LAYER_GZIP if docker else mt.OCI_LAYER_GZIP
        layers = [self.rng.choice(self.bases)]
        layers += [
            Layer.random(self.rng.randint(1024, 8192), self.rng)
            for _ in range(self.rng.choice((5, 6)))
        ]
        layer_descs = [await self._blob(layer.data, layer_type) for layer in layers]
        os_, arch = platform
        config_doc = {
            "architecture": arch,
            "os": os_,
            "config": {"Labels": {"bench.name": name}},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
        }
        config = await self._blob(
            _compact(config_doc), mt.DOCKER_CONFIG if docker else mt.OCI_CONFIG
        )
        media_type = mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
        raw = _compact(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": config.to_json(),
                "layers": [d.to_json() for d in layer_descs],
            }
        )
        return await self._manifest(raw, media_type, tags)

    async def index(self, name: str, *, docker: bool, tags: Sequence[str]) -> Descriptor:
        """An OCI index or Docker manifest list of one image per platform."""
        entries = []
        for os_, arch in PLATFORMS:
            img = await self.image(f"{name}-{arch}", docker=docker, platform=(os_, arch))
            entries.append(
                {
                    "mediaType": img.media_type,
                    "digest": img.digest,
                    "size": img.size,
                    "platform": {"architecture": arch, "os": os_},
                }
            )
        media_type = mt.DOCKER_MANIFEST_LIST if docker else mt.OCI_INDEX
        raw = _compact({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
        return await self._manifest(raw, media_type, tags)

    async def referrer(self, subject: Descriptor, artifact_type: str, payload: bytes) -> Descriptor:
        """An artifact (image manifest, empty config) whose subject is ``subject``."""
        config = await self._blob(mt.EMPTY_JSON, mt.OCI_EMPTY)
        layer = await self._blob(payload, "application/octet-stream")
        raw = _compact(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": config.to_json(),
                "layers": [layer.to_json()],
                "subject": {
                    "mediaType": subject.media_type,
                    "digest": subject.digest,
                    "size": subject.size,
                },
            }
        )
        return await self._manifest(raw, mt.OCI_MANIFEST, artifact_type=artifact_type)

    async def tag(self, tag: str, kind: str) -> Descriptor:
        """One signed root of ``kind`` under ``tag``."""
        name = f"{self.repo}:{tag}"
        if kind in ("oci", "docker"):
            root = await self.image(
                name, docker=kind == "docker", platform=PLATFORMS[0], tags=[tag]
            )
        else:
            root = await self.index(name, docker=kind == "docker-ml", tags=[tag])
        await self.referrer(root, SIGNATURE_TYPE, self.rng.randbytes(256))
        sbom = await self.referrer(
            root,
            SBOM_TYPE,
            _compact(
                {"spdxVersion": "SPDX-2.3", "name": name, "pad": self.rng.randbytes(64).hex()}
            ),
        )
        await self.referrer(sbom, SIGNATURE_TYPE, self.rng.randbytes(256))
        return root


async def build_world(target: Target, registry: str, spec: WorldSpec | None = None) -> BenchWorld:
    """Build the world of ``spec`` into ``target`` (repositories in parallel)."""
    spec = spec or WorldSpec()
    world = BenchWorld(registry)
    rng = random.Random(spec.seed)
    bases = [Layer.random(8192, rng) for _ in range(spec.base_layers)]
    plan: list[list[tuple[str, str]]] = []
    n = 0
    for _ in range(spec.repositories):
        tags = []
        for t in range(spec.tags_per_repo):
            tags.append((f"v{t}", spec.mix[n % len(spec.mix)]))
            n += 1
        plan.append(tags)

    async def one_repo(r: int, tags: list[tuple[str, str]]) -> list[tuple[str, str, str, str]]:
        repo = f"{spec.prefix}/r{r:02d}"
        b = _RepoBuilder(target, repo, world, bases, spec.seed + r)
        out = []
        for tag, kind in tags:
            root = await b.tag(tag, kind)
            out.append((repo, tag, kind, root.digest))
        return out

    results = await asyncio.gather(*(one_repo(r, tags) for r, tags in enumerate(plan)))
    for rows in results:
        world.roots.extend(rows)
    # The fallback referrers indexes the pushes wrote: one per subject (root and SBOM).
    for repo, _tag, _kind, digest in world.roots:
        for fallback in await _fallback_digests(target, repo, digest):
            world.manifests.add(fallback)
    return world


async def _fallback_digests(target: Target, repo: str, digest: str) -> list[str]:
    """Digests of the fallback index of ``digest`` and of its referrers' fallback indexes."""
    out: list[str] = []
    tag = "sha256-" + digest.split(":", 1)[1]
    try:
        desc = await target.resolve(repo, tag)
    except NotFoundError:  # a subject without referrers has no fallback tag
        return out
    out.append(desc.digest)
    _, raw = await target.fetch_manifest(repo, desc)
    for child in parse_manifest(raw, desc.media_type).manifests:
        out.extend(await _fallback_digests(target, repo, child.digest))
    return out


@dataclass(frozen=True, slots=True)
class BigImage:
    """The large image of scenario (b)."""

    repository: str
    tag: str
    digest: str
    size: int


async def build_big_image(
    target: Target,
    repository: str = "bench/big",
    tag: str = "v1",
    *,
    layers: int = 4,
    layer_size: int = 256 * 1024 * 1024,
) -> BigImage:
    """Push an image of ``layers`` random gzip layers of ``layer_size`` bytes each."""
    g = GraphBuilder(target, repository)
    descs: list[Descriptor] = []
    diff_ids: list[str] = []
    total = 0
    for _ in range(layers):
        raw = os.urandom(layer_size)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        data = gzip_layer(raw)
        del raw
        desc = await g.blob(data, mt.OCI_LAYER_GZIP)
        descs.append(desc)
        total += desc.size
        del data
    config = await g.blob(
        _compact(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        ),
        mt.OCI_CONFIG,
    )
    raw_manifest = _compact(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [d.to_json() for d in descs],
        }
    )
    desc = await g.manifest(raw_manifest, mt.OCI_MANIFEST, [tag])
    return BigImage(repository, tag, desc.digest, total + config.size)
