"""Acceptance of the foundation issue: what its "Must show" asks, on every registry variant.

What other files prove for every variant already (and this file does not repeat):
small blobs monolithic and chunked, the four manifest types byte-exact and mounts
(tests/integration/test_registry_client.py).  Here:

* 100 MiB blobs, monolithic and chunked, against each of the five variants;
* referrers written and read on each variant — through the API (the shim) and
  through the fallback tag (the four plain docker-registry variants);
* tag pagination on each variant: docker-registry 2.8 ignores ``n`` on tag lists,
  so a paging front (:class:`tests.integration.test_hostile_registry.Hostile`
  with a rule) cuts the registry's real answer into ``Link`` pages;
* through the console script: a push to a pull-only repository of the token
  registry fails with one "denied" line (exit 4), and the user-facing commands
  (pull, discover, copy, repo tags, push) give one line and the documented exit
  code for a malformed reference, an unknown host, a wrong password, a missing
  tag and a TLS certificate that does not verify.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from replicator.errors import EXIT_AUTH, EXIT_NETWORK, EXIT_NOT_FOUND, EXIT_USAGE
from replicator.oci import mediatype as mt
from replicator.oci.reference import referrers_tag
from replicator.targets.registry.client import RegistryTarget
from replicator.targets.registry.options import RegistryOptions
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import REPLICATOR, CliResult, isolated_env, run_cli
from tests.integration.test_hostile_registry import Hostile
from tests.integration.test_registry_client import (
    MiB,
    Pattern,
    _attach,
    _push_image,
    digest_of_download,
    push_bytes,
    read_all,
    run,
    target_for,
)

# -- 100 MiB on every variant -------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["monolithic", "chunked"])
def test_100_mib_blob_on_every_variant(
    registry_variant: RegistryInstance, unique_repo: str, how: str
) -> None:
    blob = Pattern(100 * MiB, seed=100 + len(how))
    desc = blob.descriptor()

    async def scenario() -> None:
        overrides: dict[str, Any] = (
            {"monolithic_max": 128 * MiB} if how == "monolithic" else {"monolithic_max": MiB}
        )
        async with target_for(registry_variant, **overrides) as target:
            chunk = 16 * MiB if how == "chunked" else None
            result = await target.push_blob(unique_repo, desc, blob.opener(), chunk_size=chunk)
            assert result.how == "uploaded" and result.bytes_sent == desc.size
            if how == "monolithic":
                assert (target.stats.blob_put, target.stats.blob_patch) == (1, 0)
            else:
                assert target.stats.blob_patch == 7  # ceil(100 / 16) chunks
            assert await target.blob_exists(unique_repo, desc)
            assert await digest_of_download(target, unique_repo, desc) == desc.digest

    run(scenario)


# -- referrers on every variant ------------------------------------------------------------


def test_referrers_written_and_read_on_every_variant(
    registry_variant: RegistryInstance, unique_repo: str
) -> None:
    has_api = registry_variant.name == "referrers"

    async def scenario() -> None:
        async with target_for(registry_variant) as target:
            repo = unique_repo
            image = await _push_image(target, repo, "v1")
            assert await target.referrers(repo, image) == []
            sig = await _attach(target, repo, image, "signature/example", "sig")
            sbom = await _attach(target, repo, image, "sbom/example", "sbom")
            sbom_sig = await _attach(target, repo, sbom, "signature/example", "sbom sig")

        # A fresh client reads them back (nothing cached from the writes).
        async with target_for(registry_variant) as reader:
            found = await reader.referrers(repo, image)
            assert sorted(d.digest for d in found) == sorted([sig.digest, sbom.digest])
            by_digest = {d.digest: d for d in found}
            assert by_digest[sig.digest].artifact_type == "signature/example"
            assert by_digest[sbom.digest].annotations == {"note": "sbom"}
            assert [d.digest for d in await reader.referrers(repo, image, "sbom/example")] == [
                sbom.digest
            ]
            assert [d.digest for d in await reader.referrers(repo, sbom)] == [sbom_sig.digest]
            assert await reader.referrers_api_supported(repo) is has_api
            tags = await reader.tags(repo)
            if has_api:
                # Written through the API: no fallback tag was made.
                assert tags == ["v1"]
                assert reader.stats.referrers >= 3
            else:
                # Written and read through the fallback tag: an index listing them.
                assert sorted(tags) == sorted(
                    ["v1", referrers_tag(image.digest), referrers_tag(sbom.digest)]
                )
                index_desc, raw = await reader.fetch_manifest(repo, referrers_tag(image.digest))
                assert index_desc.media_type == mt.OCI_INDEX
                listed = [m["digest"] for m in json.loads(raw)["manifests"]]
                assert sorted(listed) == sorted([sig.digest, sbom.digest])

    run(scenario)


# -- tag pagination on every variant -------------------------------------------------------


def _paging_rule(server: Hostile, default_page: int) -> None:
    """Serve tag lists in pages of ``n`` (or ``default_page``) with ``Link`` headers."""

    async def tags_page(request: web.Request) -> web.StreamResponse:
        upstream = await server.forward(request)
        if upstream.status != 200:
            return upstream
        assert isinstance(upstream.body, bytes)
        doc = json.loads(upstream.body)
        every = sorted(doc.get("tags") or [])
        n = int(request.query.get("n") or default_page)
        last = request.query.get("last")
        rest = [t for t in every if last is None or t > last]
        page = rest[:n]
        headers = {"Content-Type": "application/json"}
        if len(rest) > n:
            query = urllib.parse.urlencode({"n": str(n), "last": page[-1]})
            headers["Link"] = f'<{request.path}?{query}>; rel="next"'
        body = json.dumps({"name": doc.get("name"), "tags": page}).encode()
        return web.Response(status=200, body=body, headers=headers)

    server.rule("GET", r"/tags/list", tags_page)


def _tag_pages(server: Hostile, since: int) -> set[str]:
    """Distinct tag-list pages asked for since request number ``since`` (a 401 repeats one)."""
    return {p for m, p, _ in server.seen[since:] if m == "GET" and "/tags/list" in p}


@pytest.fixture
def pager(registry_variant: RegistryInstance) -> Iterator[tuple[Hostile, RegistryInstance]]:
    """A paging front before each variant (plain HTTP towards the client)."""
    server = Hostile(registry_variant.url, registry_variant.ssl_context()).start()
    _paging_rule(server, default_page=7)
    try:
        yield server, registry_variant
    finally:
        server.stop()


def test_tag_pagination_on_every_variant(
    pager: tuple[Hostile, RegistryInstance], unique_repo: str, tmp_path: Path
) -> None:
    server, instance = pager
    names = sorted([f"t{i:02d}" for i in range(23)] + ["latest", "v1.0", "v1.1"])

    async def scenario() -> None:
        async with target_for(instance) as target:
            image = await _push_image(target, unique_repo, names[0])
            raw = (await target.fetch_manifest(unique_repo, image))[1]
            for name in names[1:]:
                await target.tag(unique_repo, image, raw, name)
        # Through the paging front: same credentials, plain HTTP.
        front = instance.options(plain_http=True, ca_file=None)
        async with RegistryTarget(server.host, front) as target:
            before = len(server.seen)
            assert await target.tags(unique_repo, page_size=5) == names
            assert len(_tag_pages(server, before)) == 6  # 26 tags in pages of 5
            before = len(server.seen)
            assert await target.tags(unique_repo) == names
            assert len(_tag_pages(server, before)) == 4  # the front's default page of 7

    run(scenario)
    pages = [p for m, p, _ in server.seen if m == "GET" and "/tags/list" in p]
    assert any("last=" in p for p in pages)

    # The console script follows the pages too (open registry only: no flags needed).
    if instance.name == "open":
        result = run_cli("repo", "tags", f"{server.host}/{unique_repo}", home=tmp_path)
        assert result.code == 0, result.stderr
        assert result.stdout.split() == names


# -- token auth through the console script -----------------------------------------------------


def assert_one_error(result: CliResult, code: int, *fragments: str) -> str:
    """One ``Error:`` line (JSON log records aside), exit ``code``, no traceback."""
    assert "Traceback" not in result.output, result.stderr
    lines = result.non_log_stderr_lines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("Error: ") and "internal error" not in line, line
    for fragment in fragments:
        assert fragment in line, line
    assert result.code == code, (result.code, result.stderr)
    return line


def test_cli_push_to_a_pull_only_repository_is_denied(
    registry_token: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    password = registry_token.users["reader"]
    (tmp_path / "note.txt").write_text("not allowed\n")
    result = run_cli(
        "push",
        "-u",
        "reader",
        "--password-stdin",
        f"{registry_token.host}/{unique_repo}:v1",
        str(tmp_path / "note.txt"),
        stdin=password + "\n",
        home=tmp_path,
    )
    line = assert_one_error(result, EXIT_AUTH, "denied")
    assert password not in result.output
    assert "Pushed" not in result.stdout
    # The token server was asked for push and granted only pull: the registry refused.
    asked = [e for e in registry_token.token_log() if any(unique_repo in s for s in e["scopes"])]
    assert any("push" in s for e in asked for s in e["scopes"]), asked
    assert all(
        g["actions"] == ["pull"] for e in asked for g in e["granted"] if g["name"] == unique_repo
    ), asked
    assert unique_repo in line


# -- the five first errors, for every user-facing command ---------------------------------------

COMMANDS: dict[str, list[str]] = {
    "pull": ["pull", "-o", "{out}", "{ref}"],
    "discover": ["discover", "-o", "json", "{ref}"],
    "copy": ["copy", "-r", "{ref}", "{dst}"],
    "manifest-fetch": ["manifest", "fetch", "{ref}"],
}


def _argv(name: str, ref: str, tmp_path: Path, dst: str) -> list[str]:
    return [a.format(ref=ref, out=str(tmp_path / "out"), dst=dst) for a in COMMANDS[name]]


@pytest.fixture(params=sorted(COMMANDS))
def command(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []


def test_malformed_reference(command: str, registry_open: RegistryInstance, tmp_path: Path) -> None:
    dst = f"{registry_open.host}/t/dst:v1"
    result = run_cli(*_argv(command, "localhost:5000/Bad Repo:v1", tmp_path, dst), home=tmp_path)
    assert_one_error(result, EXIT_USAGE, "Bad Repo")
    _nothing_written(tmp_path)


def test_unknown_host(command: str, registry_open: RegistryInstance, tmp_path: Path) -> None:
    dst = f"{registry_open.host}/t/dst-unknown-host:v1"
    result = run_cli(*_argv(command, "nonexistent.invalid/x:1", tmp_path, dst), home=tmp_path)
    assert_one_error(result, EXIT_NETWORK, "nonexistent.invalid")
    _nothing_written(tmp_path)


def test_missing_tag(
    command: str, registry_open: RegistryInstance, unique_repo: Any, tmp_path: Path
) -> None:
    async def seed() -> None:
        async with target_for(registry_open) as target:
            await _push_image(target, unique_repo, "v1")

    run(seed)
    dst_repo = str(unique_repo())
    dst = f"{registry_open.host}/{dst_repo}:v1"
    ref = f"{registry_open.host}/{unique_repo}:nope"
    result = run_cli(*_argv(command, ref, tmp_path, dst), home=tmp_path)
    assert_one_error(result, EXIT_NOT_FOUND, "nope")
    _nothing_written(tmp_path)


def test_wrong_password(
    command: str, registry_basic: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    assert registry_basic.username and registry_basic.password
    wrong = "Wr0ng-" + registry_basic.password[::-1]
    dst = f"{registry_basic.host}/{unique_repo}-dst:v1"
    argv = _argv(command, f"{registry_basic.host}/{unique_repo}:v1", tmp_path, dst)
    result = run_cli(
        *argv, "-u", registry_basic.username, "--password-stdin", stdin=wrong + "\n", home=tmp_path
    )
    assert_one_error(result, EXIT_AUTH)
    assert wrong not in result.output and registry_basic.password not in result.output
    _nothing_written(tmp_path)


def test_certificate_that_does_not_verify(
    command: str, registry_tls: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(foreign))
    dst = f"{registry_tls.host}/{unique_repo}-dst:v1"
    argv = _argv(command, f"{registry_tls.host}/{unique_repo}:v1", tmp_path, dst)
    result = run_cli(*argv, "--ca-file", str(foreign), home=tmp_path)
    line = assert_one_error(result, EXIT_NETWORK, registry_tls.host)
    assert "certificate" in line.lower()
    _nothing_written(tmp_path)


def test_repo_tags_and_push_give_the_same_first_errors(
    registry_basic: RegistryInstance,
    registry_tls: RegistryInstance,
    unique_repo: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "f.txt").write_text("x\n")
    assert registry_basic.username and registry_basic.password
    foreign = tmp_path / "foreign-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(foreign))
    bad = "localhost:5000/Bad Repo"
    cases: list[tuple[list[str], int, str | None]] = [
        (["repo", "tags", bad], EXIT_USAGE, None),
        (["push", bad + ":v1", "f.txt"], EXIT_USAGE, None),
        (["repo", "tags", "nonexistent.invalid/x"], EXIT_NETWORK, None),
        (["push", "nonexistent.invalid/x:1", "f.txt"], EXIT_NETWORK, None),
        (
            [
                "repo",
                "tags",
                "-u",
                registry_basic.username,
                "--password-stdin",
                f"{registry_basic.host}/{unique_repo}",
            ],
            EXIT_AUTH,
            "not-" + registry_basic.password,
        ),
        (
            [
                "push",
                "-u",
                registry_basic.username,
                "--password-stdin",
                f"{registry_basic.host}/{unique_repo}:v1",
                "f.txt",
            ],
            EXIT_AUTH,
            "not-" + registry_basic.password,
        ),
        (["repo", "tags", "--ca-file", str(foreign), f"{registry_tls.host}/x"], EXIT_NETWORK, None),
        (
            ["push", "--ca-file", str(foreign), f"{registry_tls.host}/{unique_repo}:v1", "f.txt"],
            EXIT_NETWORK,
            None,
        ),
    ]
    for argv, code, stdin in cases:
        proc = subprocess.run(
            [REPLICATOR, *argv],
            input=(stdin + "\n") if stdin else "",
            capture_output=True,
            text=True,
            env=isolated_env(tmp_path / "home"),
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        result = CliResult(proc.returncode, proc.stdout, proc.stderr)
        assert_one_error(result, code)
        if stdin:
            assert stdin not in result.output


# -- the README's demo command ---------------------------------------------------------------


@pytest.mark.timeout(600)
def test_demo_script_ends_well_and_leaves_no_registry_running() -> None:
    """``bash scripts/demo.sh``: exit 0, the promoted tree equals the source's, nothing left."""
    import re
    import socket

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        ["bash", "scripts/demo.sh"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "demo finished: the whole graph was promoted" in out
    hosts = re.findall(r"^(?:dev|prod) registry:\s+(\S+)$", out, re.M)
    assert len(hosts) == 2, out
    dev, prod = hosts
    trees = re.findall(r"^\$ \S+ discover -o tree (\S+)\n((?:[^$\n].*\n)+)", out, re.M)
    assert len(trees) == 2, out
    (_, first), (_, second) = trees
    assert first.replace(f"{dev}/net-monitor", "X") == second.replace(
        f"{prod}/sample-staging/net-monitor", "X"
    )
    assert len(re.findall(r"sha256:[0-9a-f]{64}", first)) == 4
    assert "0 blobs copied" in out and "0 B sent" in out  # the second run
    for name in ("readme.md", "details/readme-details.md", "details/readme-more-details.md"):
        assert f"./download/{name}" in out
    # Both registries were stopped when the demo ended.
    for host in hosts:
        addr, port = host.rsplit(":", 1)
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((addr, int(port))) != 0, f"{host} still running"


# -- build points a user checks: chunk minimum, token expiry ---------------------------------


def test_chunked_upload_honours_oci_chunk_min_length(
    registry_open: RegistryInstance, unique_repo: str
) -> None:
    """A registry that asks for chunks of at least N bytes gets them (the last one aside)."""
    server = Hostile(registry_open.url).start()
    minimum = 300_000

    async def with_minimum(request: web.Request) -> web.StreamResponse:
        answer = await server.forward(request)
        if answer.status == 202:
            answer.headers["OCI-Chunk-Min-Length"] = str(minimum)
        return answer

    server.rule("POST", r"/blobs/uploads/$", with_minimum)
    blob = Pattern(1_000_000, seed=7)
    desc = blob.descriptor()

    async def scenario() -> None:
        async with RegistryTarget(server.host, RegistryOptions(plain_http=True)) as target:
            await target.push_blob(unique_repo, desc, blob.opener(), chunk_size=100_000)
        async with target_for(registry_open) as check:
            assert await digest_of_download(check, unique_repo, desc) == desc.digest

    try:
        run(scenario)
    finally:
        server.stop()
    ranges = [h.get("Content-Range", "") for m, _, h in server.seen if m == "PATCH"]
    sizes = [int(b) - int(a) + 1 for a, b in (r.split("-") for r in ranges)]
    assert sum(sizes) == desc.size, ranges
    assert len(sizes) >= 2 and all(s >= minimum for s in sizes[:-1]), sizes


def test_expired_token_is_replaced(registry_factory: Any, unique_repo: str) -> None:
    """Tokens that expire (ttl 2 s) are fetched again, not reused: the second pull works."""
    instance = registry_factory("token", token_ttl=2).instance

    async def scenario() -> None:
        async with target_for(instance, user="admin") as target:
            desc = await push_bytes(target, unique_repo, b"short-lived tokens", mt.OCI_LAYER)
            assert await read_all(target, unique_repo, desc) == b"short-lived tokens"
            first = target.stats.token  # the pull scope's token is now cached
            assert await read_all(target, unique_repo, desc) == b"short-lived tokens"
            assert target.stats.token == first  # still valid: reused
            await asyncio.sleep(3)
            assert await read_all(target, unique_repo, desc) == b"short-lived tokens"
            assert target.stats.token > first  # expired: asked again

    run(scenario)
    asked = [e for e in instance.token_log() if any(unique_repo in s for s in e["scopes"])]
    assert len(asked) >= 2
