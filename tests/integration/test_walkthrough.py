"""The seed walkthrough, played step by step with the real CLI against real registries.

Parametrised over docker-registry without the referrers API (fallback tag
schema) and the same registry behind the referrers-API shim.  Every step runs
``.venv/bin/replicator`` as a subprocess, in a working directory holding the
seed's files, exactly as a user would type the commands.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import anyio
import pytest

from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.manifest import build_image_manifest
from replicator.oci.reference import referrers_tag
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance

SEED = Path(__file__).resolve().parent.parent / "data" / "seed"
REPLICATOR = str(Path(sys.executable).with_name("replicator"))


def cli(cwd: Path, *args: str, expect: int = 0) -> str:
    """Run the replicator CLI; assert its exit code; return stdout."""
    proc = subprocess.run(
        [REPLICATOR, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "REPLICATOR_LOG_LEVEL": "warning"},
    )
    assert proc.returncode == expect, (
        f"replicator {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc.stdout


def digest_line(output: str) -> str:
    """The digest of a ``Digest: sha256:...`` summary line."""
    lines = [line for line in output.splitlines() if line.startswith("Digest: ")]
    assert len(lines) == 1, output
    return lines[0].removeprefix("Digest: ")


def push_image(instance: RegistryInstance, repository: str, tag: str) -> Descriptor:
    """Build and push a small container image (config + one layer) through the Target API."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"#!/bin/sh\necho net-monitor\n"
        info = tarfile.TarInfo("usr/bin/net-monitor")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    layer_bytes = gzip.compress(buf.getvalue(), mtime=0)
    config_bytes = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/usr/bin/net-monitor"]},
            "rootfs": {"type": "layers", "diff_ids": [descriptor_for(buf.getvalue(), "x").digest]},
        }
    ).encode()
    layer = descriptor_for(layer_bytes, mediatype.OCI_LAYER_GZIP)
    config = descriptor_for(config_bytes, mediatype.OCI_CONFIG)
    raw = build_image_manifest(
        config=config, layers=[layer], artifact_type=None, subject=None, annotations=None
    )
    manifest = descriptor_for(raw, mediatype.OCI_MANIFEST)

    async def push() -> None:
        async with RegistryTarget(instance.host, instance.options()) as target:
            for desc, data in ((layer, layer_bytes), (config, config_bytes)):

                async def opener(offset: int, data: bytes = data):  # type: ignore[no-untyped-def]
                    yield data[offset:]

                await target.push_blob(repository, desc, opener)
            await target.push_manifest(repository, manifest, raw, (tag,))

    anyio.run(push)
    return manifest


def present(instance: RegistryInstance, repository: str, digests: list[str]) -> list[str]:
    """The digests still fetchable as manifests of ``repository``."""

    async def check() -> list[str]:
        found = []
        async with RegistryTarget(instance.host, instance.options()) as target:
            for digest in digests:
                desc = Descriptor(mediatype.OCI_MANIFEST, digest, 0)
                if await target.manifest_exists(repository, desc):
                    found.append(digest)
        return found

    return anyio.run(check)


def tree(label: str, groups: list[tuple[str, list[tuple[str, list[str]]]]]) -> str:
    """Expected ``discover -o tree`` text; groups sorted by type, digests sorted.

    ``groups`` is ``[(artifact_type, [(digest, child_lines), ...]), ...]`` where
    ``child_lines`` are the nested lines (already rendered, without prefix).
    """
    lines = [label]
    groups = sorted(groups)
    for gi, (atype, members) in enumerate(groups):
        last_g = gi == len(groups) - 1
        lines.append(("└── " if last_g else "├── ") + atype)
        gp = "    " if last_g else "│   "
        members = sorted(members)
        for mi, (digest, children) in enumerate(members):
            last_m = mi == len(members) - 1
            lines.append(gp + ("└── " if last_m else "├── ") + digest)
            cp = gp + ("    " if last_m else "│   ")
            lines.extend(cp + child for child in children)
    return "\n".join(lines) + "\n"


@pytest.fixture(params=["registry_open", "registry_referrers"], ids=["fallback", "referrers-api"])
def registry(request: pytest.FixtureRequest) -> RegistryInstance:
    """docker-registry as it is (fallback tag schema) and behind the referrers-API shim."""
    instance: RegistryInstance = request.getfixturevalue(request.param)
    return instance


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A working directory holding the seed's files, as the walkthrough creates them."""
    work = tmp_path / "work"
    shutil.copytree(SEED, work)
    return work


def test_push_fetch_pull_delete_single_and_multi_file(
    registry_open: RegistryInstance, unique_repo: str, workdir: Path
) -> None:
    # No referrers here: the referrers-API variant would not change a thing.
    registry = registry_open
    ref = f"{registry.host}/{unique_repo}/samples/artifact:readme"

    # Push a single-file artifact.
    out = cli(workdir, "push", ref, "--artifact-type", "readme/example",
              "./readme.md:application/markdown")  # fmt: skip
    lines = out.splitlines()
    assert "Uploading 2fdeac43552b readme.md" in lines
    assert "Uploaded  2fdeac43552b readme.md" in lines
    assert f"Pushed [registry] {ref}" in lines
    single = digest_line(out)

    # Push a multi-file artifact (file + directory) over the same tag.
    out = cli(workdir, "push", ref, "--artifact-type", "readme/example",
              "./readme.md:application/markdown", "./details")  # fmt: skip
    multi = digest_line(out)
    assert multi != single
    assert any(
        line.startswith("Uploaded  ") and line.endswith(" details") for line in out.splitlines()
    )

    # Show the manifest.
    pretty = cli(workdir, "manifest", "fetch", "--pretty", ref)
    manifest = json.loads(pretty)
    assert pretty.startswith("{\n  ")
    assert manifest["mediaType"] == mediatype.OCI_MANIFEST
    assert manifest["artifactType"] == "readme/example"
    readme, details = manifest["layers"]
    assert readme["mediaType"] == "application/markdown"
    assert readme["digest"].startswith("sha256:2fdeac43552b") and readme["size"] == 15
    assert readme["annotations"] == {"org.opencontainers.image.title": "readme.md"}
    assert details["mediaType"] == mediatype.OCI_LAYER_GZIP
    assert details["annotations"]["org.opencontainers.image.title"] == "details"
    assert details["annotations"]["io.deis.oras.content.unpack"] == "true"
    raw = subprocess.run(
        [REPLICATOR, "manifest", "fetch", ref], capture_output=True, check=True, timeout=60
    ).stdout
    assert descriptor_for(raw, mediatype.OCI_MANIFEST).digest == multi
    assert json.loads(raw) == manifest

    # Pull it into a clean directory.
    download = workdir / "download"
    download.mkdir()
    out = cli(workdir, "pull", "-o", "./download", ref)
    assert f"Pulled [registry] {ref}" in out.splitlines()
    assert digest_line(out) == multi
    assert sorted(str(p.relative_to(download)) for p in download.rglob("*")) == [
        "details",
        "details/readme-details.md",
        "details/readme-more-details.md",
        "readme.md",
    ]
    for name in ("readme.md", "details/readme-details.md", "details/readme-more-details.md"):
        assert (download / name).read_bytes() == (SEED / name).read_bytes()

    # The registry catalog lists the repository (under its namespace).
    namespace = unique_repo.split("/", 1)[0]
    listed = cli(workdir, "repo", "ls", f"{registry.host}/{namespace}").splitlines()
    assert f"{unique_repo}/samples/artifact" in listed
    assert all(name.startswith(namespace + "/") for name in listed)

    # Delete it.
    out = cli(workdir, "manifest", "delete", "-f", ref)
    assert f"Deleted [registry] {ref}" in out.splitlines()
    cli(workdir, "manifest", "fetch", ref, expect=3)


def test_supply_chain_graph_walkthrough(
    registry: RegistryInstance, unique_repo: str, workdir: Path
) -> None:
    repo = f"{unique_repo}/net-monitor"
    image = f"{registry.host}/{repo}:v1"
    image_desc = push_image(registry, repo, "v1")

    # Attach a signature and the readme files as referrers.
    out = cli(workdir, "attach", image, "--artifact-type", "signature/example",
              "./signature.json:application/json")  # fmt: skip
    assert f"Attached to [registry] {image}" in out.splitlines()
    signature = digest_line(out)
    out = cli(workdir, "attach", image, "--artifact-type", "readme/example",
              "./readme.md:application/markdown", "./details")  # fmt: skip
    readme = digest_line(out)

    assert cli(workdir, "discover", "-o", "tree", image) == tree(
        image, [("signature/example", [(signature, [])]), ("readme/example", [(readme, [])])]
    )

    # Attach an SBOM, find it by type, sign it.
    sbom = digest_line(cli(workdir, "attach", image, "--artifact-type", "sbom/example",
                           "./sbom.json:application/json"))  # fmt: skip
    found = json.loads(
        cli(workdir, "discover", "-o", "json", "--artifact-type", "sbom/example", image)
    )
    assert len(found["manifests"]) == 1
    assert found["manifests"][0]["digest"] == sbom
    assert found["manifests"][0]["artifactType"] == "sbom/example"
    out = cli(workdir, "attach", f"{image}@{sbom}",
              "--artifact-type", "signature/example", "./sbom-signature.json:application/json")  # fmt: skip
    sbom_signature = digest_line(out)

    three_levels: list[tuple[str, list[tuple[str, list[str]]]]] = [
        ("sbom/example", [(sbom, ["└── signature/example", f"    └── {sbom_signature}"])]),
        ("readme/example", [(readme, [])]),
        ("signature/example", [(signature, [])]),
    ]
    source_tree = cli(workdir, "discover", "-o", "tree", image)
    assert source_tree == tree(image, three_levels)
    assert len(source_tree.splitlines()) == 9

    # Promote the graph.
    staging = f"{registry.host}/{unique_repo}/sample-staging/net-monitor:v1"
    out = cli(workdir, "copy", "-r", image, staging)
    assert digest_line(out) == image_desc.digest
    assert cli(workdir, "discover", "-o", "tree", staging) == tree(staging, three_levels)
    pull_from = staging
    pull_repo = pull_from.rsplit(":", 1)[0]

    # Find the readme referrer at the target and pull it by digest.
    doc = json.loads(cli(workdir, "discover", "-o", "json", "--artifact-type", "readme/example",
                         pull_from))  # fmt: skip
    doc_digest = doc["manifests"][0]["digest"]
    assert doc_digest == readme
    cli(workdir, "pull", "-o", "./download", f"{pull_repo}@{doc_digest}")
    download = workdir / "download"
    assert sorted(str(p.relative_to(download)) for p in download.rglob("*")) == [
        "details",
        "details/readme-details.md",
        "details/readme-more-details.md",
        "readme.md",
    ]
    for name in ("readme.md", "details/readme-details.md", "details/readme-more-details.md"):
        assert (download / name).read_bytes() == (SEED / name).read_bytes()

    # The tag list shows what users care about.
    assert cli(workdir, "repo", "tags", f"{registry.host}/{repo}") == "v1\n"
    all_tags = cli(workdir, "repo", "tags", "--include-digest-tags", f"{registry.host}/{repo}")
    if registry.name == "open":  # fallback tag schema in use: the tags exist, hidden above
        assert referrers_tag(image_desc.digest) in all_tags.splitlines()
        assert referrers_tag(sbom) in all_tags.splitlines()

    # Delete the whole graph, and the promoted copy.
    graph = [image_desc.digest, signature, readme, sbom, sbom_signature]
    for ref in [image, staging]:
        out = cli(workdir, "manifest", "delete", "-f", ref)
        assert f"Deleted [registry] {ref}" in out.splitlines()
        base = ref.rsplit(":", 1)[0]
        cli(workdir, "manifest", "fetch", f"{base}@{sbom_signature}", expect=3)
        assert present(registry, base.split("/", 1)[1], graph) == []
        proc = subprocess.run(
            [REPLICATOR, "repo", "tags", "--include-digest-tags", base],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode in (0, 3), proc.stderr
        assert proc.stdout == ""


def _run_on_tty(cwd: Path, args: list[str], answer: bytes) -> tuple[int, str]:
    """Run the CLI with stdin/stdout on a pseudo-terminal, type ``answer``; (rc, output)."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [REPLICATOR, *args], cwd=cwd, stdin=slave, stdout=slave, stderr=subprocess.PIPE
        )
        os.close(slave)
        slave = -1
        seen = b""
        while b"[y/N]" not in seen:
            chunk = os.read(master, 4096)
            assert chunk, seen
            seen += chunk
        os.write(master, answer)
        stderr = proc.communicate(timeout=60)[1]
        try:
            while chunk := os.read(master, 4096):
                seen += chunk
        except OSError:  # EIO once the child closed the terminal
            pass
        return proc.returncode, seen.decode() + stderr.decode()
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)


def test_manifest_delete_asks_on_a_tty_and_refuses_without_one(
    registry_open: RegistryInstance, unique_repo: str, workdir: Path
) -> None:
    ref = f"{registry_open.host}/{unique_repo}:tmp"
    digest = digest_line(cli(workdir, "push", ref, "./readme.md"))

    # No terminal: refuse with a usage error, delete nothing.
    proc = subprocess.run(
        [REPLICATOR, "manifest", "delete", ref],
        cwd=workdir,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "-f/--force" in proc.stderr
    assert present(registry_open, unique_repo, [digest]) == [digest]

    question = (
        f'Are you sure you want to delete the manifest "{digest}" and all its referrers? [y/N]'
    )
    rc, output = _run_on_tty(workdir, ["manifest", "delete", ref], b"n\n")
    assert rc == 1 and question in output and "Aborted: nothing was deleted" in output
    assert present(registry_open, unique_repo, [digest]) == [digest]

    rc, output = _run_on_tty(workdir, ["manifest", "delete", ref], b"y\n")
    assert rc == 0, output
    assert f"Deleted [registry] {ref}" in output
    assert present(registry_open, unique_repo, [digest]) == []
