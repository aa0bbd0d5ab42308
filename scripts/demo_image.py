"""Push a small multi-layer OCI image to a registry, for the demo.

Usage: python scripts/demo_image.py HOST/REPO:TAG

Builds a config blob and two gzip'd tar layers in memory (a few KiB), pushes
them and the image manifest through replicator's own registry target, and
prints the manifest digest.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import tarfile
from collections.abc import AsyncIterator, Callable

import anyio

from replicator.oci import mediatype as mt
from replicator.oci.digest import descriptor_for
from replicator.oci.manifest import build_image_manifest
from replicator.oci.reference import parse_reference
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RegistryOptions


def _layer(name: str, content: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buf.getvalue(), mtime=0)


def _opener(data: bytes) -> Callable[[int], AsyncIterator[bytes]]:
    async def opener(offset: int) -> AsyncIterator[bytes]:
        yield data[offset:]

    return opener


async def _push(text: str) -> None:
    ref = parse_reference(text)
    layers = [
        _layer("usr/bin/net-monitor", b"#!/bin/sh\necho monitoring the network\n" * 64),
        _layer("etc/net-monitor.conf", b"interval=5s\n"),
    ]
    layer_descs = [descriptor_for(data, mt.OCI_LAYER_GZIP) for data in layers]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": ["/usr/bin/net-monitor"],
                "Labels": {"version": ref.tag or "latest"},
            },
            "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layer_descs]},
        }
    ).encode()
    config_desc = descriptor_for(config, mt.OCI_CONFIG)
    target = RegistryTarget(ref.registry, RegistryOptions())
    try:
        for desc, data in [(config_desc, config), *zip(layer_descs, layers, strict=True)]:
            await target.push_blob(ref.repository, desc, _opener(data))
        raw = build_image_manifest(
            config=config_desc,
            layers=layer_descs,
            artifact_type=None,
            subject=None,
            annotations=None,
        )
        desc = descriptor_for(raw, mt.OCI_MANIFEST)
        await target.push_manifest(ref.repository, desc, raw, tags=(ref.tag or "latest",))
        print(desc.digest)
    finally:
        await target.aclose()


if __name__ == "__main__":
    anyio.run(_push, sys.argv[1])
