"""A malformed sync config: every problem as FILE:LINE: key: message, exit 2, nothing contacted.

The config names a real registry behind a counting proxy: ``sync``, ``sync
--dry-run`` and ``verify`` must refuse the file before any request.  Problems
found by the schema (types, ranges, templates) and by the checks across keys
(a leading ``!`` pattern, a gate with referrers off, a destination equal to
its source, a catalog collapsed into one repository) are all listed at once,
each with the line of its key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.infra.proxy import FaultProxy
from tests.infra.registry import RegistryInstance
from tests.integration.cli_helpers import run_cli
from tests.integration.sync_helpers import write_config

SCHEMA_ERRORS = """\
version: 1
jobs:
  - name: promote
    source: HOST/x/api
    destinations: [HOST/x/prod]
    tags:
      latest: 0
      allow: ['v(']
    backup: 'previous'
  - name: mirror
    source: {registry: HOST, repositories: [x/*]}
    destinations: ["HOST/m/{repo}"]
    overwrite: sometimes
  - name: promote
    source: HOST/x/web:v1
    destinations: [HOST/x/web-prod]
    tags: {include: ["1.10", 2024-01-31]}
"""

EXPECTED_SCHEMA = (
    "sync.yaml:7: jobs[0].tags.latest: must be at least 1 (got 0)",
    "sync.yaml:8: jobs[0].tags.allow[0]: invalid regular expression 'v('",
    "sync.yaml:9: jobs[0].backup: 'previous' must contain {tag}",
    "sync.yaml:12: jobs[1].destinations[0]: unknown template field {repo}",
    "sync.yaml:13: jobs[1].overwrite: must be 'if-changed', 'never' or 'always' (got 'sometimes')",
    "sync.yaml:14: jobs[2].name: duplicate job name 'promote' (first at line 3)",
    "sync.yaml:15: jobs[2].source: invalid reference",
    "sync.yaml:17: jobs[2].tags.include[1]: must be a string: write it in quotes ('2024-01-31')",
)

CHECK_ERRORS = """\
version: 1
jobs:
  - name: mirror
    source: {registry: HOST, repositories: ["!x/*", "x/a"]}
    destinations: ["HOST/m/{repository}"]
    require: [application/vnd.example.sig]
    referrers: false
  - name: same
    source: HOST/x/a
    destinations: [HOST/x/a]
  - name: flat
    source: {registry: HOST, repositories: ["x/*"]}
    destinations: ["HOST/flat"]
"""

EXPECTED_CHECKS = (
    "sync.yaml:4: jobs[0].source.repositories[0]: the first pattern must select",
    "sync.yaml:6: jobs[0].require: needs referrers, which are off",
    "sync.yaml:10: jobs[1].destinations[0]: is the source itself",
    "sync.yaml:13: jobs[2].destinations[0]: a catalog source needs {repository} or {name}",
)


def test_config_errors_name_file_line_and_key_and_nothing_is_contacted(
    registry_open: RegistryInstance,
    fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
) -> None:
    proxy = fault_proxy(registry_open)
    for text, expected in ((SCHEMA_ERRORS, EXPECTED_SCHEMA), (CHECK_ERRORS, EXPECTED_CHECKS)):
        config = write_config(tmp_path / "sync.yaml", text.replace("HOST", proxy.host))
        for args in (("sync",), ("sync", "--dry-run"), ("verify", "--deep")):
            result = run_cli(args[0], str(config), *args[1:], home=tmp_path)
            assert result.code == 2, (args, result.output[-2000:])
            assert "Traceback" not in result.output
            lines = [line.strip() for line in result.stderr.splitlines()]
            assert lines[0].startswith(f"Error: {config}: ") and lines[0].endswith(" errors")
            for want in expected:
                want = want.replace("sync.yaml", str(config), 1)
                assert any(line.startswith(want) for line in lines), (want, lines)
            assert result.stdout == ""
    assert proxy.stats().log == []

    # An unknown job name is refused the same way, naming the jobs there are.
    valid = write_config(
        tmp_path / "valid.yaml",
        f"version: 1\njobs:\n  - name: a\n    source: {proxy.host}/x/a\n"
        f"    destinations: [{proxy.host}/x/b]\n",
    )
    unknown = run_cli("sync", str(valid), "--job", "nope", home=tmp_path)
    assert unknown.code == 2, unknown.output[-2000:]
    assert "no job named 'nope' (jobs: a)" in unknown.stderr
    assert proxy.stats().log == []


def test_an_invalid_destination_is_not_also_reported_as_an_empty_list(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "sync.yaml",
        "version: 1\njobs:\n  - name: a\n    source: reg.example/x/a\n"
        '    destinations: ["reg.example/m/{repo}"]\n',
    )
    result = run_cli("sync", str(config), home=tmp_path)
    assert result.code == 2
    assert "unknown template field {repo}" in result.stderr
    assert "must not be empty" not in result.stderr, result.stderr
