"""Acceptance of the walkthrough issue beyond tests/integration/test_walkthrough.py.

test_walkthrough.py plays the seed walkthrough on docker-registry (fallback tag
schema) and behind the referrers-API shim, without authentication.  Users of
real registries log in, so this file plays the same steps on the Basic-auth and
the token-auth registries, every command with ``--debug --log-format json`` and
credentials on stdin, and checks that

* every step works and gives the same graph (tree, digests) at the promoted
  copy, whose tag list shows only ``v1``;
* no password, Basic credential, JWT or refresh token appears anywhere in what
  the commands print (stdout and the debug logs on stderr) or in ``copy --report``;
* ``manifest delete -f`` leaves no manifest of the graph and no fallback tag.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import REPLICATOR, CliResult, isolated_env
from tests.integration.test_no_secrets_in_logs import assert_no_secrets, debug_records
from tests.integration.test_walkthrough import SEED, digest_line, present, push_image, tree


@pytest.fixture(params=["registry_basic", "registry_token"], ids=["basic", "token"])
def auth_registry(request: pytest.FixtureRequest) -> RegistryInstance:
    instance: RegistryInstance = request.getfixturevalue(request.param)
    return instance


class Session:
    """Runs the console script as one logged-in user and keeps everything it printed."""

    def __init__(self, instance: RegistryInstance, workdir: Path, home: Path) -> None:
        self.instance = instance
        self.workdir = workdir
        self.home = home
        self.results: list[CliResult] = []
        user = "admin" if instance.name == "token" else instance.username
        assert user is not None
        self.user = user
        self.password = instance.users[user]

    def __call__(self, *args: str, expect: int = 0) -> str:
        proc = subprocess.run(
            [REPLICATOR, "--debug", "--log-format", "json", *args, "-u", self.user,
             "--password-stdin"],
            input=self.password + "\n",
            cwd=self.workdir,
            capture_output=True,
            text=True,
            env=isolated_env(self.home),
            timeout=120,
            check=False,
        )  # fmt: skip
        result = CliResult(proc.returncode, proc.stdout, proc.stderr)
        self.results.append(result)
        assert result.code == expect, (args, result.code, result.stderr[-3000:])
        return result.stdout


def test_walkthrough_on_auth_registries_with_debug_leaks_no_secret(
    auth_registry: RegistryInstance, unique_repo: str, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    shutil.copytree(SEED, workdir)
    cli = Session(auth_registry, workdir, tmp_path / "home")
    host = auth_registry.host
    repo = f"{unique_repo}/net-monitor"
    image = f"{host}/{repo}:v1"
    image_desc = push_image(auth_registry, repo, "v1")

    signature = digest_line(cli("attach", image, "--artifact-type", "signature/example",
                                "./signature.json:application/json"))  # fmt: skip
    readme = digest_line(cli("attach", image, "--artifact-type", "readme/example",
                             "./readme.md:application/markdown", "./details"))  # fmt: skip
    sbom = digest_line(cli("attach", image, "--artifact-type", "sbom/example",
                           "./sbom.json:application/json"))  # fmt: skip
    found = json.loads(cli("discover", "-o", "json", "--artifact-type", "sbom/example", image))
    assert found["manifests"][0]["digest"] == sbom
    sbom_signature = digest_line(cli("attach", f"{image}@{sbom}", "--artifact-type",
                                     "signature/example", "./sbom-signature.json:application/json"))  # fmt: skip

    three_levels: list[tuple[str, list[tuple[str, list[str]]]]] = [
        ("sbom/example", [(sbom, ["└── signature/example", f"    └── {sbom_signature}"])]),
        ("readme/example", [(readme, [])]),
        ("signature/example", [(signature, [])]),
    ]
    assert cli("discover", "-o", "tree", image) == tree(image, three_levels)

    staging_repo = f"{unique_repo}/sample-staging/net-monitor"
    staging = f"{host}/{staging_repo}:v1"
    assert digest_line(cli("copy", "-r", image, staging, "--report", "report.json")) == (
        image_desc.digest
    )
    report = (workdir / "report.json").read_text()
    assert image_desc.digest in report
    assert_no_secrets(CliResult(0, report, ""), auth_registry)  # nor in the JSON report
    assert cli("discover", "-o", "tree", staging) == tree(staging, three_levels)
    assert cli("repo", "tags", f"{host}/{staging_repo}") == "v1\n"
    assert cli("repo", "tags", f"{host}/{repo}") == "v1\n"

    doc = json.loads(cli("discover", "-o", "json", "--artifact-type", "readme/example", staging))
    assert doc["manifests"][0]["digest"] == readme
    cli("pull", "-o", "./download", f"{host}/{staging_repo}@{readme}")
    for name in ("readme.md", "details/readme-details.md", "details/readme-more-details.md"):
        assert (workdir / "download" / name).read_bytes() == (SEED / name).read_bytes()
    manifest = json.loads(cli("manifest", "fetch", f"{host}/{staging_repo}@{sbom_signature}"))
    assert manifest["subject"]["digest"] == sbom

    graph = [image_desc.digest, signature, readme, sbom, sbom_signature]
    for ref, name in ((image, repo), (staging, staging_repo)):
        cli("manifest", "delete", "-f", ref)
        assert present(auth_registry, name, graph) == []
        cli("manifest", "fetch", f"{host}/{name}@{sbom}", expect=3)
        left = subprocess.run(
            [REPLICATOR, "repo", "tags", "--include-digest-tags", f"{host}/{name}",
             "-u", cli.user, "--password-stdin"],
            input=cli.password + "\n",
            capture_output=True,
            text=True,
            env=isolated_env(tmp_path / "home"),
            timeout=60,
            check=False,
        )  # fmt: skip
        assert left.returncode in (0, 3), left.stderr
        assert left.stdout == "", left.stdout  # no fallback tag left behind

    # Debug logging was really on, and nothing secret reached any output.
    assert sum(len(debug_records(r)) for r in cli.results) > 50
    for result in cli.results:
        assert_no_secrets(result, auth_registry)
