"""``replicator pull`` never writes outside its output directory, whatever the artifact says.

Hostile artifacts are built by hand (manifests and tars) and pushed through the
Target API to a real registry; the real CLI then pulls them.  Each must be
refused with exit code 6 and one ``Error:`` line, leave the directory around
the output directory exactly as it was, and leave nothing inside it either
(no half-written files: a safe layer next to an unsafe one is not placed).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import secrets
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from replicator.oci import mediatype
from replicator.oci.descriptor import Descriptor
from replicator.oci.digest import descriptor_for
from replicator.oci.manifest import build_image_manifest
from replicator.targets.registry.client import RegistryTarget
from tests.infra.registry import RegistryInstance

REPLICATOR = str(Path(sys.executable).with_name("replicator"))
TITLE = "org.opencontainers.image.title"
UNPACK = "io.deis.oras.content.unpack"
CONTENT_DIGEST = "io.deis.oras.content.digest"

#: A layer: (media type, bytes, annotations).
Layer = tuple[str, bytes, dict[str, str]]


def make_tar(entries: list[tuple[str, str, str]]) -> bytes:
    """An uncompressed tar of ``(name, kind, payload)``; kind in file|dir|sym|link|chr."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if kind == "file":
                data = payload.encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "link": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
            }[kind]
            if kind == "chr":
                info.devmajor, info.devminor = 1, 3
            info.linkname = payload if kind in ("sym", "link") else ""
            tar.addfile(info)
    return buf.getvalue()


def dir_layer(
    title: str, entries: list[tuple[str, str, str]], *, digest: str | None = None
) -> Layer:
    """A directory layer as ORAS writes it (tar+gzip, unpack, content digest)."""
    plain = make_tar(entries)
    content = digest or "sha256:" + hashlib.sha256(plain).hexdigest()
    return (
        mediatype.OCI_LAYER_GZIP,
        gzip.compress(plain, mtime=0),
        {TITLE: title, UNPACK: "true", CONTENT_DIGEST: content},
    )


def file_layer(title: str, data: bytes = b"payload\n") -> Layer:
    """A plain file layer titled ``title``."""
    return ("application/octet-stream", data, {TITLE: title})


def push_artifact(
    instance: RegistryInstance, repository: str, tag: str, layers: list[Layer]
) -> None:
    """Push blobs and a hand-built artifact manifest through the Target API."""
    descs = [
        Descriptor(media_type, descriptor_for(data, media_type).digest, len(data), annotations=ann)
        for media_type, data, ann in layers
    ]
    config = Descriptor(mediatype.OCI_EMPTY, mediatype.EMPTY_JSON_DIGEST, 2)
    raw = build_image_manifest(
        config=config, layers=descs, artifact_type="test/hostile", subject=None, annotations=None
    )
    blobs = [(config, mediatype.EMPTY_JSON)] + [
        (desc, data) for desc, (_, data, _) in zip(descs, layers, strict=True)
    ]

    async def push() -> None:
        async with RegistryTarget(instance.host, instance.options()) as target:
            for desc, data in blobs:

                async def opener(offset: int, data: bytes = data):  # type: ignore[no-untyped-def]
                    yield data[offset:]

                await target.push_blob(repository, desc, opener)
            await target.push_manifest(
                repository, descriptor_for(raw, mediatype.OCI_MANIFEST), raw, (tag,)
            )

    anyio.run(push)


def snapshot(root: Path) -> list[tuple[str, str]]:
    """Every path under ``root`` (not following links) with its kind."""
    found: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
            found.append((str(p.relative_to(root)), kind))
    return sorted(found)


def pull(cwd: Path, ref: str, outdir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``replicator pull -o OUTDIR REF``."""
    return subprocess.run(
        [REPLICATOR, "pull", "-o", str(outdir), ref],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


ETC_NAME = f"replicator-pull-safety-{secrets.token_hex(6)}"

#: name -> (layers builder given the sandbox dir, paths that must not appear, message part)
CASES: dict[str, tuple[Callable[[Path], list[Layer]], Callable[[Path], list[Path]], str]] = {
    "title-dotdot": (
        lambda s: [file_layer("good.txt"), file_layer("../x")],
        lambda s: [s / "x"],
        "'..'",
    ),
    "title-absolute": (
        lambda s: [file_layer(str(s / "abs-title"))],
        lambda s: [s / "abs-title"],
        "absolute",
    ),
    "tar-dotdot": (
        lambda s: [dir_layer("d", [("d/", "dir", ""), ("d/../../escape", "file", "x")])],
        lambda s: [s / "escape"],
        "'..'",
    ),
    "tar-root-dotdot": (
        lambda s: [dir_layer("d", [("../escape", "file", "x")])],
        lambda s: [s / "escape"],
        "'..'",
    ),
    "tar-absolute": (
        lambda s: [dir_layer("d", [(str(s / "abs-entry"), "file", "x")])],
        lambda s: [s / "abs-entry"],
        "absolute",
    ),
    "symlink-to-etc": (
        lambda s: [
            dir_layer(
                "d",
                [("d/", "dir", ""), ("d/etc", "sym", "/etc"), (f"d/etc/{ETC_NAME}", "file", "x")],
            )
        ],
        lambda s: [Path("/etc") / ETC_NAME],
        "outside",
    ),
    "symlink-out-of-dir": (
        lambda s: [dir_layer("d", [("d/up", "sym", "../../.."), ("d/up/pwned", "file", "x")])],
        lambda s: [s / "pwned"],
        "outside",
    ),
    "hardlink-outside": (
        lambda s: [dir_layer("d", [("d/", "dir", ""), ("d/h", "link", str(s / "secret"))])],
        lambda s: [],
        "absolute",
    ),
    "hardlink-dotdot": (
        lambda s: [dir_layer("d", [("d/", "dir", ""), ("d/h", "link", "../secret")])],
        lambda s: [],
        "'..'",
    ),
    "device-file": (
        lambda s: [dir_layer("d", [("d/", "dir", ""), ("d/null", "chr", "")])],
        lambda s: [],
        "device file",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_artifact_is_refused_and_nothing_is_written(
    case: str, registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    build, forbidden, message = CASES[case]
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    (sandbox / "secret").write_text("do not link me\n")
    outdir = sandbox / "out"
    outdir.mkdir()
    push_artifact(registry_open, unique_repo, "hostile", build(sandbox))
    before = snapshot(sandbox)

    proc = pull(tmp_path, f"{registry_open.host}/{unique_repo}:hostile", outdir)

    assert proc.returncode == 6, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(sandbox) == before
    assert list(outdir.iterdir()) == []
    for path in forbidden(sandbox):
        assert not os.path.lexists(path), path


def test_wrong_content_digest_is_refused(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    layer = dir_layer("d", [("d/", "dir", ""), ("d/a", "file", "a")], digest="sha256:" + "0" * 64)
    push_artifact(registry_open, unique_repo, "bad", [file_layer("ok.txt"), layer])
    proc = pull(tmp_path, f"{registry_open.host}/{unique_repo}:bad", tmp_path / "out")
    assert proc.returncode == 6, proc.stderr
    assert "io.deis.oras.content.digest" in proc.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_safe_links_inside_the_directory_are_pulled(
    registry_open: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    layer = dir_layer(
        "d",
        [
            ("d/", "dir", ""),
            ("d/a.txt", "file", "A\n"),
            ("d/sub/", "dir", ""),
            ("d/sub/rel", "sym", "../a.txt"),
            ("d/hard", "link", "d/a.txt"),
        ],
    )
    push_artifact(registry_open, unique_repo, "ok", [file_layer("f.bin", b"\x00\x01"), layer])
    out = tmp_path / "out"
    proc = pull(tmp_path, f"{registry_open.host}/{unique_repo}:ok", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "f.bin").read_bytes() == b"\x00\x01"
    assert (out / "d" / "sub" / "rel").read_text() == "A\n"
    assert os.readlink(out / "d" / "sub" / "rel") == "../a.txt"
    assert (out / "d" / "hard").read_text() == "A\n"
    assert snapshot(out) == [
        ("d", "dir"),
        ("d/a.txt", "file"),
        ("d/hard", "file"),
        ("d/sub", "dir"),
        ("d/sub/rel", "link"),
        ("f.bin", "file"),
    ]
