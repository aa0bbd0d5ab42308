"""Shared pieces of the bundle tests: keys, graphs compared tag by tag, skopeo, tar assembly."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from replicator.targets.base import Target
from replicator.targets.ocilayout import OCILayoutTarget
from replicator.targets.registry import RegistryTarget
from tests.infra.registry import RegistryInstance
from tests.integration.graphs import assert_same_graph


def make_key(directory: Path, name: str = "bundle") -> tuple[Path, Path]:
    """An Ed25519 key pair in PEM files ``NAME.key`` and ``NAME.pub``."""
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def registry(instance: RegistryInstance) -> RegistryTarget:
    """A client of ``instance``."""
    return RegistryTarget(instance.host, instance.options())


def assert_same_tags(
    src: RegistryInstance,
    tags: list[tuple[str, str]],
    dest: RegistryInstance | Path,
    prefix: str = "",
) -> None:
    """Every ``(repository, tag)`` of ``src`` is at ``dest`` (``prefix/repository``), digest
    for digest, referrers included; ``dest`` is a registry or an OCI layout."""

    async def check() -> None:
        a = registry(src)
        b: Target = OCILayoutTarget(dest) if isinstance(dest, Path) else registry(dest)
        try:
            for repo, tag in tags:
                where = f"{prefix}/{repo}" if prefix else repo
                await assert_same_graph(a, repo, tag, b, where, tag)
        finally:
            await a.aclose()
            await b.aclose()

    anyio.run(check)


def skopeo_inspect(image: str) -> dict[str, Any]:
    """``skopeo inspect IMAGE`` parsed (asserting it succeeded)."""
    skopeo = shutil.which("skopeo")
    assert skopeo, "skopeo is required for the interop checks (apt-get install skopeo)"
    done = subprocess.run([skopeo, "inspect", image], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def assemble(bundle: Path, into: Path) -> Path:
    """``cat part-*.tar | tar -x -C INTO``: the layout the parts form."""
    into.mkdir(parents=True)
    parts = sorted(bundle.glob("part-*.tar"))
    with subprocess.Popen(["tar", "-x", "-C", str(into)], stdin=subprocess.PIPE) as tar:
        assert tar.stdin is not None
        for part in parts:
            tar.stdin.write(part.read_bytes())
        tar.stdin.close()
        assert tar.wait(timeout=120) == 0
    return into


def write_requests(stats: Any) -> int:
    """Requests that could change a registry (anything but GET and HEAD)."""
    return sum(1 for r in stats.log if r.method not in ("GET", "HEAD"))
