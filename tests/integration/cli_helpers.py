"""Helpers for tests that run the real ``replicator`` console script."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.infra.registry import RegistryInstance

REPLICATOR = str(Path(sys.executable).parent / "replicator")


@dataclass(frozen=True)
class CliResult:
    """What one run of the console script produced."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together (for leak checks)."""
        return self.stdout + self.stderr

    def non_log_stderr_lines(self) -> list[str]:
        """stderr lines that are not JSON log records (the CLI's own messages)."""
        lines = []
        for line in self.stderr.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                lines.append(line)
                continue
            if not (isinstance(record, dict) and "event" in record):
                lines.append(line)
        return lines


def isolated_env(home: Path) -> dict[str, str]:
    """An environment with no credentials from the developer's machine."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REPLICATOR_") and k not in {"DOCKER_CONFIG", "HOME"}
    }
    docker = home / ".docker"
    docker.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["DOCKER_CONFIG"] = str(docker)
    env["NO_COLOR"] = "1"
    return env


def run_cli(*args: str, home: Path, stdin: str | None = None, timeout: float = 60) -> CliResult:
    """Run ``replicator ARGS`` with a clean environment (logs as JSON lines)."""
    proc = subprocess.run(
        [REPLICATOR, *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=isolated_env(home),
        timeout=timeout,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def _request(
    instance: RegistryInstance,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str]]:
    all_headers = dict(headers or {})
    all_headers.update(instance.basic_auth_header())
    req = urllib.request.Request(url, data=body, method=method, headers=all_headers)
    context: ssl.SSLContext | None = instance.ssl_context()
    with urllib.request.urlopen(req, timeout=30, context=context) as resp:
        return resp.status, dict(resp.headers.items())


def push_tiny_image(instance: RegistryInstance, repository: str, tag: str) -> str:
    """Push a one-layer OCI image by hand (urllib) and return its manifest digest.

    Works for the open, basic and TLS variants (not the token variant).
    """
    base = instance.url
    blobs: list[tuple[str, bytes, str]] = [
        ("application/vnd.oci.image.config.v1+json", b'{"architecture":"amd64","os":"linux"}', ""),
        (
            "application/vnd.oci.image.layer.v1.tar",
            b"hello from the cli tests\n" + tag.encode(),
            "",
        ),
    ]
    descriptors = []
    for media_type, data, _ in blobs:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers = _request(instance, "POST", f"{base}/v2/{repository}/blobs/uploads/")
        assert status == 202, status
        location = urllib.parse.urljoin(base + "/", headers["Location"])
        sep = "&" if "?" in location else "?"
        status, _ = _request(
            instance,
            "PUT",
            f"{location}{sep}digest={urllib.parse.quote(digest)}",
            body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert status == 201, status
        descriptors.append({"mediaType": media_type, "digest": digest, "size": len(data)})
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptors[0],
            "layers": descriptors[1:],
        },
        separators=(",", ":"),
    ).encode()
    status, _ = _request(
        instance,
        "PUT",
        f"{base}/v2/{repository}/manifests/{tag}",
        body=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert status == 201, status
    return "sha256:" + hashlib.sha256(manifest).hexdigest()
