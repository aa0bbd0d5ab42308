"""The default (system) CA roots are loaded on first TLS use, not when aiohttp is imported.

``replicator.targets.registry._aiohttp`` defers aiohttp's import-time loading of
the system CA bundle.  These tests run a fresh interpreter (so replicator's
import is the first import of aiohttp) against the real TLS registry, with
``SSL_CERT_FILE`` standing in for the system bundle: the registry's own CA must
verify, another CA must not, and nothing is loaded before the first connection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import trustme

from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import push_tiny_image

_PROBE = """
import asyncio, json, sys
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RegistryOptions
import aiohttp.connector as connector

ctx = connector._SSL_CONTEXT_VERIFIED
out = {
    "kind": type(ctx).__name__,
    "pending_after_import": bool(ctx.__dict__.get("_roots_pending")),
}

async def main():
    async with RegistryTarget(sys.argv[1], RegistryOptions(plain_http=False)) as target:
        desc = await target.resolve(sys.argv[2], sys.argv[3])
        return str(desc.digest)

try:
    out["digest"] = asyncio.run(main())
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
out["pending_after_use"] = bool(ctx.__dict__.get("_roots_pending"))
out["roots"] = ctx.cert_store_stats()["x509_ca"]
print(json.dumps(out))
"""


def _probe(instance: RegistryInstance, repo: str, tag: str, cert_file: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in {"SSL_CERT_DIR"}}
    env["SSL_CERT_FILE"] = cert_file
    env["SSL_CERT_DIR"] = "/nonexistent"  # the bundle above is the whole trust store
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, instance.host, repo, tag],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_system_roots_load_on_first_connection_and_verify(
    registry_tls: RegistryInstance, unique_repo: str
) -> None:
    assert registry_tls.ca_file is not None
    digest = push_tiny_image(registry_tls, unique_repo, "v1")
    out = _probe(registry_tls, unique_repo, "v1", registry_tls.ca_file)
    assert out["kind"] == "RootsOnFirstUse"
    assert out["pending_after_import"] is True  # nothing read at import time
    assert out.get("error") is None, out
    assert out["digest"] == digest
    assert out["pending_after_use"] is False
    assert out["roots"] >= 1  # the bundle SSL_CERT_FILE names, loaded


def test_default_roots_still_refuse_a_certificate_they_did_not_sign(
    registry_tls: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    push_tiny_image(registry_tls, unique_repo, "v1")
    foreign = tmp_path / "foreign.pem"
    trustme.CA().cert_pem.write_to_path(str(foreign))
    out = _probe(registry_tls, unique_repo, "v1", str(foreign))
    assert "digest" not in out, out
    assert "certificate" in str(out["error"]).lower(), out
    assert out["roots"] >= 1
