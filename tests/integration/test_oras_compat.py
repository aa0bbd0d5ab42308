"""What ``replicator push`` writes matches the ORAS conventions, field by field.

The artifact is pushed with the real CLI to a real registry, then read back
through the Target API and checked against PROTOCOL.md: manifest fields, the
empty config, file layers, and the directory layer's media type, title,
unpack flag and ``io.deis.oras.content.digest`` (recomputed by gunzipping).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import anyio

from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance

SEED = Path(__file__).resolve().parent.parent / "data" / "seed"
REPLICATOR = str(Path(sys.executable).with_name("replicator"))
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def run_cli(cwd: Path, *args: str) -> str:
    """Run the CLI, require success, return stdout."""
    proc = subprocess.run([REPLICATOR, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def read_back(
    instance: RegistryInstance, repository: str, tag: str
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest as JSON and every blob it names, by digest, through the Target API."""

    async def fetch() -> tuple[dict[str, Any], dict[str, bytes]]:
        async with RegistryTarget(instance.host, instance.options()) as target:
            _, raw = await target.fetch_manifest(repository, tag)
            doc = json.loads(raw)
            blobs: dict[str, bytes] = {}
            for item in [doc["config"], *doc["layers"]]:
                desc = Descriptor.from_json(item)
                chunks = [c async for c in target.fetch_blob(repository, desc)]
                blobs[desc.digest] = b"".join(chunks)
            return doc, blobs

    return anyio.run(fetch)


def test_pushed_artifact_matches_oras_conventions(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    shutil.copytree(SEED, work)
    (work / "notes.bin").write_bytes(b"\x00binary\xff")
    (work / "annotations.json").write_text(
        json.dumps(
            {"$manifest": {"com.example.owner": "net"}, "details": {"com.example.kind": "docs"}}
        )
    )
    ref = f"{registry_open.host}/{unique_repo}:compat"
    out = run_cli(
        work,
        "push",
        ref,
        "--artifact-type",
        "readme/example",
        "--annotation-file",
        "annotations.json",
        "./readme.md:application/markdown",
        "./details",
        "notes.bin",
    )
    doc, blobs = read_back(registry_open, unique_repo, "compat")
    assert "Digest: " in out

    # Manifest fields.
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == mediatype.OCI_MANIFEST
    assert doc["artifactType"] == "readme/example"
    assert doc["config"] == {
        "mediaType": "application/vnd.oci.empty.v1+json",
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "size": 2,
    }
    assert blobs[doc["config"]["digest"]] == b"{}"
    assert RFC3339.match(doc["annotations"]["org.opencontainers.image.created"])
    assert doc["annotations"]["com.example.owner"] == "net"
    assert "subject" not in doc
    assert [layer["annotations"]["org.opencontainers.image.title"] for layer in doc["layers"]] == [
        "readme.md",
        "details",
        "notes.bin",
    ]

    # File layers: the exact bytes, titled with the base name, typed as asked or as ORAS does.
    readme, details, notes = doc["layers"]
    assert readme["mediaType"] == "application/markdown"
    assert blobs[readme["digest"]] == (SEED / "readme.md").read_bytes()
    assert readme["size"] == 15
    assert notes["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert blobs[notes["digest"]] == b"\x00binary\xff"
    assert notes["annotations"] == {"org.opencontainers.image.title": "notes.bin"}

    # The directory layer.
    blob = blobs[details["digest"]]
    assert details["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert details["size"] == len(blob)
    assert details["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    plain = gzip.decompress(blob)
    assert details["annotations"] == {
        "com.example.kind": "docs",
        "io.deis.oras.content.digest": "sha256:" + hashlib.sha256(plain).hexdigest(),
        "io.deis.oras.content.unpack": "true",
        "org.opencontainers.image.title": "details",
    }
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == [
            "details",
            "details/readme-details.md",
            "details/readme-more-details.md",
        ]
        assert members["details"].isdir()
        for name in ("details/readme-details.md", "details/readme-more-details.md"):
            assert members[name].isreg()
            content = tar.extractfile(members[name])
            assert content is not None and content.read() == (SEED / name).read_bytes()


def test_default_artifact_type_and_reproducible_directory_layer(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    shutil.copytree(SEED, work)
    ref = f"{registry_open.host}/{unique_repo}"
    run_cli(work, "push", f"{ref}:one", "./details")
    (work / "details" / "readme-details.md").touch()  # a new mtime must not change the layer
    run_cli(work, "push", f"{ref}:two", "./details")
    one, _ = read_back(registry_open, unique_repo, "one")
    two, _ = read_back(registry_open, unique_repo, "two")
    assert one["artifactType"] == "application/vnd.unknown.artifact.v1"
    assert one["layers"][0]["digest"] == two["layers"][0]["digest"]
