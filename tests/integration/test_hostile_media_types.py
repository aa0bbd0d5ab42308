"""Unknown media types travel byte for byte; what a registry refuses is one clear error.

* An artifact whose config, layers and ``artifactType`` are of media types
  nobody knows, written with odd whitespace, unknown fields and non-ASCII
  annotations, with a referrer of an unknown type: copied registry → layout →
  registry, every manifest arrives with its exact bytes (same digests).
* A manifest whose own ``mediaType`` is unknown (replicator copies the OCI and
  Docker manifest types only), listed in a layout: the copy ends in one
  ``Error:`` line, no tag, nothing written.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from replicator.errors import EXIT_REGISTRY, EXIT_USAGE
from replicator.oci import mediatype as mt
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.targets.ocilayout import OCILayoutTarget
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import run_cli
from tests.integration.graphs import GraphBuilder, assert_same_graph
from tests.integration.test_hostile_registry import assert_one_error, tag_exists

CONFIG_TYPE = "application/vnd.example.never-heard-of.config.v3+cbor"
LAYER_TYPE = "application/x-example-unknown; charset=binary"
ARTIFACT_TYPE = "application/vnd.example.never-heard-of.v3"


async def _unknown_artifact(target: RegistryTarget, repo: str) -> Descriptor:
    g = GraphBuilder(target, repo)
    config = await g.blob(b"\xa1dwhat\x01", CONFIG_TYPE)
    layer = await g.blob(bytes(range(256)) * 20, LAYER_TYPE)
    raw = (
        '{\n\t"schemaVersion":2 ,\r\n  "mediaType" : "' + mt.OCI_MANIFEST + '",\n'
        '  "artifactType":"' + ARTIFACT_TYPE + '",\n'
        '  "config":' + json.dumps(config.to_json()) + ",\n"
        '  "layers":[' + json.dumps(layer.to_json(), indent=8) + "],\n"
        '  "x-future-field": {"nested": [1, 2.50, true, null]},\n'
        '  "annotations":{"été":"\\u2603 snow", "empty": ""}\n}\n\n'
    ).encode()
    root = await g.manifest(raw, mt.OCI_MANIFEST, ["v1"], artifact_type=ARTIFACT_TYPE)
    await g.referrer(root, ARTIFACT_TYPE + ".note", b"a note of an unknown kind")
    return root


def test_unknown_media_types_travel_byte_for_byte_through_a_layout_and_back(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    async def build() -> Descriptor:
        async with RegistryTarget(registry_open.host, registry_open.options()) as t:
            return await _unknown_artifact(t, unique_repo)

    root = asyncio.run(build())
    layout = tmp_path / "layout"
    back = f"{unique_repo}-back"
    home = tmp_path / "home"
    host = registry_open.host
    out = run_cli(
        "copy", "-r", "--no-journal", f"{host}/{unique_repo}:v1", f"ocidir://{layout}:v1", home=home
    )
    assert out.code == 0, out.stderr
    again = run_cli(
        "copy", "-r", "--no-journal", f"ocidir://{layout}:v1", f"{host}/{back}:v1", home=home
    )
    assert again.code == 0, again.stderr
    assert f"Digest: {root.digest}" in again.stdout

    async def check() -> None:
        async with RegistryTarget(host, registry_open.options()) as t:
            lay = OCILayoutTarget(layout)
            try:
                snap = await assert_same_graph(t, unique_repo, "v1", lay, "", "v1")
                assert len(snap.manifests) == 2
                await assert_same_graph(t, unique_repo, "v1", t, back, "v1")
            finally:
                await lay.aclose()

    asyncio.run(check())


def test_manifest_of_an_unknown_media_type_is_one_clear_error_and_no_tag(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    """replicator copies manifests of the OCI and Docker types only: a layout listing
    a manifest of another ``mediaType`` (written by hand) is refused in one line."""
    strange = "application/vnd.example.strange.manifest.v9+json"
    src = tmp_path / "src"
    asyncio.run(OCILayoutTarget(src, create=True).aclose())
    blob = b"payload of a strange manifest"
    blob_desc = descriptor_for(blob, "application/octet-stream")
    raw = json.dumps(
        {"schemaVersion": 2, "mediaType": strange, "config": blob_desc.to_json(), "layers": []},
        indent=1,
    ).encode()
    root = descriptor_for(raw, strange)
    for data, desc in ((blob, blob_desc), (raw, root)):
        path = src / "blobs" / "sha256" / desc.digest.split(":")[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    index = json.loads((src / "index.json").read_text())
    index["manifests"] = [
        {**root.to_json(), "annotations": {"org.opencontainers.image.ref.name": "v1"}}
    ]
    (src / "index.json").write_text(json.dumps(index))
    home = tmp_path / "home"
    out = tmp_path / "out"
    for dst in (f"ocidir://{out}:v1", f"{registry_open.host}/{unique_repo}:v1"):
        result = run_cli("copy", "--no-journal", f"ocidir://{src}:v1", dst, home=home)
        assert result.code != 0, result.stdout
        assert_one_error(result, result.code)
        assert result.code in (EXIT_REGISTRY, EXIT_USAGE), result.stderr
    assert not tag_exists(registry_open, unique_repo, "v1")
    assert not (out / "blobs" / "sha256" / root.digest.split(":")[1]).exists()
