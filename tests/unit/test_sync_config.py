"""The sync configuration file: validation messages, cascade, digest, registry options.

Every broken configuration is loaded from a real file and must fail with one
``FILE:LINE: key.path: message`` line per problem, saying what is allowed.
"""

from __future__ import annotations

import datetime
import os
import re
import textwrap
from pathlib import Path

import pytest

from replicator.errors import EXIT_USAGE, ConfigError
from replicator.observe.logging import redact_text
from replicator.oci.descriptor import Platform
from replicator.sync.config import SyncConfig, load_config, parse_config
from replicator.sync.config_schema import CatalogSource, ReferrerRules
from replicator.sync.yamlsource import ConfigFileError
from replicator.targets.registry.options import Credentials, RegistryOptions

BRIEF_EXAMPLE = r"""
version: 1
defaults:                          # any job key; a job's own value wins
  referrers: true
registries:                        # optional, per host
  dev.example.com:
    credentials: {username-env: DEV_USER, password-env: DEV_PASS}
    tls: verify
    ca-file: ./dev-ca.pem
    limits: {concurrency: 8, requests-per-second: 20, bandwidth: 50MiB, min-remaining: 10}
jobs:
  - name: promote-api
    source: dev.example.com/team/api             # one repository ...
    destinations: [prod.example.com/team/api]
  - name: mirror-team
    source: {registry: dev.example.com, repositories: ["team/*", "!team/legacy-*"]}
    destinations: ["prod.example.com/mirror/{repository}", "ocidir://./airgap"]
    tags:
      allow: ['v\d+\.\d+\.\d+']
      deny: ['.*-rc\d*']
      semver: '>=1.2.0 <2.0.0'
      latest: 5
      include: [stable]
      immutable: ['v*']
    referrers: {artifact-types: [], exclude-artifact-types: [], depth: null}
    require: [application/vnd.dev.cosign.artifact.sig.v1+json]
    platforms: [linux/amd64, linux/arm64]
    overwrite: if-changed
    backup: '{tag}-previous'
    schedule: '*/15 * * * *'
    prune: {enabled: false, max: 10}
"""

MINIMAL_JOB = """\
jobs:
  - name: one
    source: dev.example.com/team/api
    destinations: [prod.example.com/team/api]
"""


def write(tmp_path: Path, text: str, name: str = "sync.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str) -> SyncConfig:
    return load_config(write(tmp_path, text))


def problems(tmp_path: Path, text: str) -> list[str]:
    """The problem lines of a config that must fail, with the file shown as ``sync.yaml``."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert info.value.exit_code == EXIT_USAGE
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: {len(info.value.problems)} error" + (
        "s" if len(info.value.problems) != 1 else ""
    )
    assert lines[1:] == list(info.value.problems)
    return [line.replace(str(path), "sync.yaml") for line in info.value.problems]


# --------------------------------------------------------------------------- the valid example


def test_brief_example_loads_with_typed_effective_settings(tmp_path: Path) -> None:
    config = load(tmp_path, BRIEF_EXAMPLE)
    promote, mirror = config.jobs
    assert promote.name == "promote-api"
    assert promote.source_reference().repository == "team/api"
    assert promote.referrer_rules == ReferrerRules()
    assert promote.overwrite == "if-changed"
    assert not promote.is_catalog
    assert isinstance(mirror.source, CatalogSource)
    assert mirror.source.repositories == ("team/*", "!team/legacy-*")
    assert mirror.destinations == (
        "prod.example.com/mirror/{repository}",
        f"ocidir://{tmp_path}/airgap",
    )
    assert [p.pattern for p in mirror.tags.allow] == [r"v\d+\.\d+\.\d+"]
    assert mirror.tags.semver is not None and mirror.tags.semver.expression == ">=1.2.0 <2.0.0"
    assert mirror.tags.latest == 5
    assert mirror.tags.include == ("stable",)
    assert mirror.platforms == (Platform("linux", "amd64"), Platform("linux", "arm64"))
    assert mirror.backup == "{tag}-previous"
    assert mirror.schedule == "*/15 * * * *"
    assert mirror.interval is None
    assert mirror.prune.max == 10
    settings = config.registry_settings("dev.example.com")
    assert settings is not None
    assert settings.limits.bandwidth == 50 * 1024 * 1024
    assert settings.limits.requests_per_second == 20.0
    assert settings.ca_file == str(tmp_path / "dev-ca.pem")
    assert config.digest.startswith("sha256:") and len(config.digest) == 71
    assert set(config.job_digests) == {"promote-api", "mirror-team"}


def test_graph_filter_follows_the_referrer_rules_and_platforms(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        version: 1
        jobs:
          - name: one
            source: dev.example.com/a
            destinations: [prod.example.com/a]
            referrers: {artifact-types: ['application/vnd.*'], exclude-artifact-types: [x/y], depth: 2}
            platforms: [linux/arm64/v8]
          - name: two
            source: dev.example.com/b
            destinations: [prod.example.com/b]
            referrers: false
        """,
    )
    one, two = (job.graph_filter() for job in config.jobs)
    assert one.referrers and one.max_depth == 2
    assert one.include_types == ("application/vnd.*",) and one.exclude_types == ("x/y",)
    assert one.platforms == (Platform("linux", "arm64", "v8"),)
    assert not two.referrers


def test_interval_and_schedule_macros(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "version: 1\n"
        + MINIMAL_JOB
        + "    interval: 1h30m\n"
        + "  - {name: two, source: a.io/b, destinations: [c.io/b], schedule: '@daily'}\n",
    )
    assert config.jobs[0].interval == datetime.timedelta(hours=1, minutes=30)
    assert config.jobs[1].schedule == "@daily"


def test_yaml_12_keeps_yes_and_dates_apart_from_strings(tmp_path: Path) -> None:
    # 'on' and 'no' are plain strings in YAML 1.2; quoted numbers stay as written.
    config = load(
        tmp_path,
        "version: 1\n" + MINIMAL_JOB + "    tags: {include: [on, no, '1.10']}\n",
    )
    assert config.jobs[0].tags.include == ("on", "no", "1.10")


# --------------------------------------------------------------------------- every error


def _job(extra: str) -> str:
    return "version: 1\n" + MINIMAL_JOB + textwrap.indent(textwrap.dedent(extra), "    ")


BROKEN: list[tuple[str, str, str]] = [
    # (config, expected "LINE: path", expected message part)
    ("version: 2\n" + MINIMAL_JOB, "1: version", "must be 1 (got 2)"),
    ("version: '1'\n" + MINIMAL_JOB, "1: version", "must be 1 (got '1')"),
    (MINIMAL_JOB, "1", "version: required: write 'version: 1'"),
    ("version: 1\njobs: []\n", "2: jobs", "must not be empty"),
    ("version: 1\njobs: {a: 1}\n", "2: jobs", "must be a list"),
    ("version: 1\njobs: [5]\n", "2: jobs[0]", "must be a mapping"),
    ("version: 1\njob: []\n" + MINIMAL_JOB, "2: job", "unknown key 'job' (did you mean 'jobs'?)"),
    (
        "version: 1\njobs:\n  - {source: a.io/b, destinations: [c.io/b]}\n",
        "3: jobs[0].name",
        "required",
    ),
    (_job("source2: x\n"), "6: jobs[0].source2", "unknown key 'source2' (did you mean 'source'?)"),
    (_job("tags: {lates: 3}\n"), "6: jobs[0].tags.lates", "did you mean 'latest'?"),
    (
        _job("tags: {latest: 3, includes: [a]}\n"),
        "6: jobs[0].tags.includes",
        "allowed: allow, deny, semver, latest, include, immutable",
    ),
    (
        "version: 1\njobs:\n  - {name: Bad.Name, source: a.io/b, destinations: [c.io/b]}\n",
        "3: jobs[0].name",
        "lower-case letters, digits, '-' and '_'",
    ),
    (
        "version: 1\njobs:\n  - {name: ../x, source: a.io/b, destinations: [c.io/b]}\n",
        "3: jobs[0].name",
        "names files and metric labels",
    ),
    (
        "version: 1\njobs:\n  - {name: x, destinations: [c.io/b]}\n",
        "3: jobs[0].source",
        "required (in the job or in defaults)",
    ),
    (
        "version: 1\njobs:\n  - {name: x, source: a.io/b:v1, destinations: [c.io/b]}\n",
        "3: jobs[0].source",
        "tags go under tags.include",
    ),
    (
        "version: 1\njobs:\n  - {name: x, source: 5, destinations: [c.io/b]}\n",
        "3: jobs[0].source",
        "must be a repository (host/path or ocidir://PATH) or a mapping",
    ),
    (
        "version: 1\njobs:\n  - {name: x, source: {repositories: [a]}, destinations: ['c.io/{name}']}\n",
        "3: jobs[0].source.registry",
        "required",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source: {registry: docker.io, repositories: [a/*]}\n"
        "    destinations: ['c.io/{repository}']\n",
        "4: jobs[0].source.registry",
        "Docker Hub does not list its repositories",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source: {registry: ocidir://x, repositories: [a]}\n"
        "    destinations: ['c.io/{repository}']\n",
        "4: jobs[0].source.registry",
        "an OCI layout has no registry settings",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source:\n      registry: a.io\n"
        "      repositories: ['!team/legacy-*', 'team/*']\n"
        "    destinations: ['c.io/{repository}']\n",
        "6: jobs[0].source.repositories[0]",
        "the first pattern must select",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source:\n      registry: a.io\n"
        "      repositories: [Team/*]\n    destinations: ['c.io/{repository}']\n",
        "6: jobs[0].source.repositories[0]",
        "'Team/*' has upper-case letters",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source:\n      registry: a.io\n"
        "      repositories: []\n    destinations: ['c.io/{repository}']\n",
        "6: jobs[0].source.repositories",
        "must not be empty",
    ),
    (
        "version: 1\njobs:\n  - {name: x, source: a.io/b, destinations: []}\n",
        "3: jobs[0].destinations",
        "must not be empty",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source: a.io/b\n    destinations:\n"
        "      - c.io/{repo}\n",
        "6: jobs[0].destinations[0]",
        "unknown template field {repo} in 'c.io/{repo}': allowed: {repository}, {name}",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source: a.io/b\n    destinations:\n"
        "      - '{name}.io/x'\n",
        "6: jobs[0].destinations[0]",
        "template fields belong in the repository path, not the host",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source: a.io/b\n    destinations:\n"
        "      - c.io/{repository!r}\n",
        "6: jobs[0].destinations[0]",
        "takes no format or conversion",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source: a.io/b\n    destinations:\n"
        "      - c.io/b:v1\n",
        "6: jobs[0].destinations[0]",
        "expected a repository, without a tag",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source: a.io/b\n    destinations:\n"
        "      - c.io/Upper/{name}\n",
        "6: jobs[0].destinations[0]",
        "repository name must be lowercase",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source: {registry: a.io, repositories: [t/*]}\n"
        "    destinations: [c.io/mirror]\n",
        "5: jobs[0].destinations[0]",
        "a catalog source needs {repository} or {name} in a registry destination",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source: a.io/b\n    destinations: [a.io/b]\n",
        "5: jobs[0].destinations[0]",
        "is the source itself",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source: a.io/t/b\n"
        "    destinations: [c.io/t/b, 'c.io/t/{name}']\n",
        "5: jobs[0].destinations[1]",
        "the same destination as destinations[0]",
    ),
    (
        "version: 1\njobs:\n  - name: x\n    source: ocidir://./in\n"
        "    destinations: ['c.io/{name}']\n",
        "5: jobs[0].destinations[0]",
        "the source has no repository name",
    ),
    (
        _job("tags: {allow: ['v\\d+(']}\n"),
        "6: jobs[0].tags.allow[0]",
        "invalid regular expression 'v\\d+(': missing ), unterminated subpattern at position 4",
    ),
    (_job("tags: {deny: ['']}\n"), "6: jobs[0].tags.deny[0]", "empty regular expression"),
    (_job("tags: {allow: 'v.*'}\n"), "6: jobs[0].tags.allow", "must be a list"),
    (
        _job("tags: {semver: '>=1.2 <'}\n"),
        "6: jobs[0].tags.semver",
        "invalid semver range '>=1.2 <'",
    ),
    (_job("tags: {semver: ''}\n"), "6: jobs[0].tags.semver", "empty semver range"),
    (_job("tags: {latest: 0}\n"), "6: jobs[0].tags.latest", "must be at least 1 (got 0)"),
    (_job("tags: {latest: '5'}\n"), "6: jobs[0].tags.latest", "must be a whole number"),
    (_job("tags: {latest: true}\n"), "6: jobs[0].tags.latest", "must be a whole number"),
    (_job("tags: {latest: 2.5}\n"), "6: jobs[0].tags.latest", "must be a whole number"),
    (
        _job("tags: {include: [1.10]}\n"),
        "6: jobs[0].tags.include[0]",
        "must be a string: write it in quotes ('1.10') so YAML keeps it as written",
    ),
    (
        _job("tags: {include: [2024-01-31]}\n"),
        "6: jobs[0].tags.include[0]",
        "write it in quotes ('2024-01-31')",
    ),
    (_job("tags: {include: [-bad]}\n"), "6: jobs[0].tags.include[0]", "'-bad' is not a tag"),
    (
        _job("tags: {include: [sha256-" + "a" * 64 + "]}\n"),
        "6: jobs[0].tags.include[0]",
        "is a digest-like tag: such tags are never selected",
    ),
    (
        _job("tags: {include: [a, b, a]}\n"),
        "6: jobs[0].tags.include[2]",
        "'a' is listed twice (first at index 0)",
    ),
    (_job("tags: {immutable: ['']}\n"), "6: jobs[0].tags.immutable[0]", "empty glob"),
    (
        _job("referrers: yes\n"),
        "6: jobs[0].referrers",
        "must be true, false or a mapping (enabled, artifact-types, exclude-artifact-types, "
        "depth) (YAML 1.2 reads 'yes' as text: write true or false)",
    ),
    (_job("referrers: 5\n"), "6: jobs[0].referrers", "must be true, false or a mapping"),
    (_job("referrers: {depth: 0}\n"), "6: jobs[0].referrers.depth", "must be at least 1 (got 0)"),
    (
        _job("referrers: {artifact-type: [a/b]}\n"),
        "6: jobs[0].referrers.artifact-type",
        "did you mean 'artifact-types'?",
    ),
    (
        _job("referrers: {enabled: false, depth: 2}\n"),
        "6: jobs[0].referrers",
        "mean nothing with referrers off",
    ),
    (
        _job("referrers: false\nrequire: [application/x]\n"),
        "7: jobs[0].require",
        "needs referrers, which are off: no graph could pass",
    ),
    (
        _job("referrers: {artifact-types: [application/vnd.*]}\nrequire: [text/plain]\n"),
        "7: jobs[0].require[0]",
        "'text/plain' is not in referrers.artifact-types",
    ),
    (
        _job("referrers: {exclude-artifact-types: ['text/*']}\nrequire: [text/plain]\n"),
        "7: jobs[0].require[0]",
        "is excluded by referrers.exclude-artifact-types",
    ),
    (_job("require: [signature]\n"), "6: jobs[0].require[0]", "is not a media type"),
    (_job("platforms: [linux]\n"), "6: jobs[0].platforms[0]", "invalid platform 'linux'"),
    (
        _job("platforms: [linux/amd64, linux/amd64]\n"),
        "6: jobs[0].platforms[1]",
        "listed twice",
    ),
    (
        _job("overwrite: sometimes\n"),
        "6: jobs[0].overwrite",
        "must be 'if-changed', 'never' or 'always' (got 'sometimes')",
    ),
    (_job("backup: previous\n"), "6: jobs[0].backup", "'previous' must contain {tag}"),
    (_job("backup: '{tag}/old'\n"), "6: jobs[0].backup", "does not give a valid tag"),
    (_job("backup: '{digest}'\n"), "6: jobs[0].backup", "unknown template field {digest}"),
    (
        _job("backup: '{tag}-old'\noverwrite: never\n"),
        "6: jobs[0].backup",
        "has no effect with overwrite: never",
    ),
    (_job("schedule: '* * * *'\n"), "6: jobs[0].schedule", "is not a cron expression: five fields"),
    (_job("schedule: '0 0 * * * *'\n"), "6: jobs[0].schedule", "is not a cron expression"),
    (_job("schedule: '61 * * * *'\n"), "6: jobs[0].schedule", "is not a cron expression"),
    (_job("interval: 10 minutes\n"), "6: jobs[0].interval", "is not a duration: write 30s"),
    (_job("interval: 600\n"), "6: jobs[0].interval", "must be a string"),
    (_job("interval: 0s\n"), "6: jobs[0].interval", "must be at least 1s"),
    (
        _job("schedule: '@hourly'\ninterval: 1h\n"),
        "7: jobs[0].interval",
        "schedule and interval exclude each other",
    ),
    (_job("prune: {max: 0}\n"), "6: jobs[0].prune.max", "must be at least 1 (got 0)"),
    (
        _job("prune: {enabled: no}\n"),
        "6: jobs[0].prune.enabled",
        "must be true or false (YAML 1.2 reads 'no' as text",
    ),
    (
        "version: 1\njobs:\n  - {name: a, source: a.io/b, destinations: [c.io/b]}\n"
        "  - {name: a, source: a.io/c, destinations: [c.io/c]}\n",
        "4: jobs[1].name",
        "duplicate job name 'a' (first at line 3)",
    ),
    # defaults
    (
        "version: 1\ndefaults: {name: x}\n" + MINIMAL_JOB,
        "2: defaults.name",
        "a job name has no default",
    ),
    (
        "version: 1\ndefaults: {schedul: '@daily'}\n" + MINIMAL_JOB,
        "2: defaults.schedul",
        "did you mean 'schedule'?",
    ),
    ("version: 1\ndefaults: [a]\n" + MINIMAL_JOB, "2: defaults", "must be a mapping"),
    # registries
    (
        "version: 1\nregistries:\n  'bad host!': {}\n" + MINIMAL_JOB,
        "3: registries[bad host!]",
        "not a registry host",
    ),
    (
        "version: 1\nregistries:\n  docker.io: {}\n  index.docker.io: {}\n" + MINIMAL_JOB,
        "4: registries[index.docker.io]",
        "the same registry as 'docker.io' (line 3)",
    ),
    (
        "version: 1\nregistries:\n  a.io: {tls: off}\n" + MINIMAL_JOB,
        "3: registries[a.io].tls",
        "must be 'verify', 'insecure' or 'plain-http' (got 'off')",
    ),
    (
        "version: 1\nregistries:\n  a.io:\n    credentials: {username: bob}\n" + MINIMAL_JOB,
        "4: registries[a.io].credentials",
        "needs a password: password-env or password-file",
    ),
    (
        "version: 1\nregistries:\n  a.io:\n    credentials: {password-env: P}\n" + MINIMAL_JOB,
        "4: registries[a.io].credentials",
        "needs a user name: username or username-env",
    ),
    (
        "version: 1\nregistries:\n  a.io:\n    credentials:\n      username: bob\n"
        "      password-env: P\n      password-file: /p\n" + MINIMAL_JOB,
        "7: registries[a.io].credentials.password-file",
        "give password-env or password-file, not both",
    ),
    (
        "version: 1\nregistries:\n  a.io:\n    credentials:\n      username: bob\n"
        "      username-env: U\n      password-env: P\n" + MINIMAL_JOB,
        "6: registries[a.io].credentials.username-env",
        "give username or username-env, not both",
    ),
    (
        "version: 1\nregistries:\n  a.io:\n    credentials: {username-env: 'MY-USER', password-env: P}\n"
        + MINIMAL_JOB,
        "4: registries[a.io].credentials.username-env",
        "must name an environment variable",
    ),
    (
        "version: 1\nregistries:\n  a.io:\n    credentials: {username: u, password-file: p, token: t}\n"
        + MINIMAL_JOB,
        "4: registries[a.io].credentials.token",
        "unknown key 'token'; allowed: username, username-env, password-env, password-file",
    ),
    (
        "version: 1\nregistries:\n  a.io: {tls: plain-http, ca-file: /ca.pem}\n" + MINIMAL_JOB,
        "3: registries[a.io].ca-file",
        "cannot go with tls: plain-http",
    ),
    (
        "version: 1\nregistries:\n  a.io: {tls: insecure, ca-file: /ca.pem}\n" + MINIMAL_JOB,
        "3: registries[a.io].ca-file",
        "a ca-file has no effect",
    ),
    (
        "version: 1\nregistries:\n  a.io: {limits: {concurrency: 0}}\n" + MINIMAL_JOB,
        "3: registries[a.io].limits.concurrency",
        "must be at least 1 (got 0)",
    ),
    (
        "version: 1\nregistries:\n  a.io: {limits: {bandwidth: 50 parsecs}}\n" + MINIMAL_JOB,
        "3: registries[a.io].limits.bandwidth",
        "'50 parsecs' is not a size above zero: write 50MiB",
    ),
    (
        "version: 1\nregistries:\n  a.io: {limits: {requests-per-second: 0}}\n" + MINIMAL_JOB,
        "3: registries[a.io].limits.requests-per-second",
        "must be above 0 (got 0)",
    ),
    (
        "version: 1\nregistries:\n  a.io: {limits: {rps: 5}}\n" + MINIMAL_JOB,
        "3: registries[a.io].limits.rps",
        "allowed: concurrency, requests-per-second, bandwidth, min-remaining",
    ),
    # malformed YAML
    ("version: 1\njobs:\n\t- name: x\n", "3", "invalid YAML: found character '\\t'"),
    ("version: 1\njobs:\n\t- name: x\n", "3", "indent with spaces, not tabs"),
    (
        "version: 1\nfoo: 'abc\nbar: 2\n",
        "4",
        "invalid YAML: found unexpected end of stream (while scanning a quoted scalar started at line 2)",
    ),
    (
        "version: 1\nversion: 1\n" + MINIMAL_JOB,
        "2: version",
        "duplicate key (first given at line 1)",
    ),
    ("version: 1\n" + MINIMAL_JOB + "---\nversion: 1\n", "6", "but found another document"),
    (
        "version: 1\nbase: &b {referrers: false}\njobs:\n  - <<: *b\n    name: x\n",
        "4: jobs[0]",
        "YAML merge keys (<<) are not supported: use defaults",
    ),
    ("version: !!binary aGk=\n" + MINIMAL_JOB, "1: version", "unsupported YAML tag"),
    ("version: !custom 1\n" + MINIMAL_JOB, "1: version", "unsupported YAML tag '!custom'"),
    ("", "1", "empty file: start with 'version: 1'"),
    ("- a\n- b\n", "1", "must be a mapping with version, defaults, registries and jobs"),
    ("version: 1\n[a]: b\n" + MINIMAL_JOB, "2", "keys must be plain strings"),
    ("version: 1\njobs: *nope\n", "2", "found undefined alias 'nope'"),
    ("version: 1\nloop: &x [1, *x]\n" + MINIMAL_JOB, "2: loop[1]", "an alias refers to itself"),
    ("a:\n  b: 1\n c: 2\n", "3", "invalid YAML"),
    (
        "version: 1\njobs:\n  - {name: x, source: a.io/b, destinations: [c.io/{name}]}\n",
        "3",
        "put a value holding braces in quotes: '{repository}'",
    ),
]


@pytest.mark.parametrize(("text", "where", "message"), BROKEN)
def test_every_problem_names_file_line_path_and_what_is_allowed(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    lines = problems(tmp_path, text)
    prefix = f"sync.yaml:{where}: "
    matching = [line for line in lines if line.startswith(prefix) and message in line]
    assert matching, f"no line starts with {prefix!r} and holds {message!r}: {lines}"


def test_all_problems_of_a_file_at_once_sorted_by_line(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """\
        version: 1
        jobs:
          - name: a
            source: a.io/b
            destinations: [c.io/b]
            tags: {latest: 0}
          - name: b
            source: a.io/c
            destinations: [c.io/c]
            overwrite: sometimes
            interval: soon
        """,
    )
    assert lines == [
        "sync.yaml:6: jobs[0].tags.latest: must be at least 1 (got 0)",
        "sync.yaml:10: jobs[1].overwrite: must be 'if-changed', 'never' or 'always' (got 'sometimes')",
        "sync.yaml:11: jobs[1].interval: 'soon' is not a duration: write 30s, 10m, 1h or 1h30m",
    ]


def test_a_bad_default_is_reported_once_at_defaults(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        """\
        version: 1
        defaults:
          tags: {latest: 0}
        jobs:
          - {name: a, source: a.io/a, destinations: [c.io/a]}
          - {name: b, source: a.io/b, destinations: [c.io/b]}
          - {name: c, source: a.io/c, destinations: [c.io/c], tags: {latest: -1}}
        """,
    )
    assert lines == [
        "sync.yaml:3: defaults.tags.latest: must be at least 1 (got 0)",
        "sync.yaml:7: jobs[2].tags.latest: must be at least 1 (got -1)",
    ]


def test_a_cross_key_problem_from_defaults_points_at_the_key_that_came_from_there(
    tmp_path: Path,
) -> None:
    lines = problems(
        tmp_path,
        """\
        version: 1
        defaults:
          interval: 10m
        jobs:
          - {name: a, source: a.io/a, destinations: [c.io/a], schedule: '@daily'}
          - {name: b, source: a.io/b, destinations: [c.io/b]}
          - {name: c, source: a.io/c, destinations: [c.io/c], schedule: '@hourly'}
        """,
    )
    assert lines == [
        "sync.yaml:3: defaults.interval: schedule and interval exclude each other: give one "
        "(inherited by job 'a')",
        "sync.yaml:3: defaults.interval: schedule and interval exclude each other: give one "
        "(inherited by job 'c')",
    ]


def test_many_problems_are_listed_up_to_a_cap_and_counted(tmp_path: Path) -> None:
    jobs = "".join(
        f"  - {{name: j{i}, source: a.io/b{i}, destinations: [c.io/b{i}], tags: {{latest: 0}}}}\n"
        for i in range(60)
    )
    path = write(tmp_path, "version: 1\njobs:\n" + jobs)
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    assert len(info.value.problems) == 60
    shown = str(info.value).splitlines()
    assert shown[0] == f"{path}: 60 errors"
    assert shown[-1] == f"{path}: ... and 10 more"


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read: No such file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"version: 1\n\xff\xfe")
    with pytest.raises(ConfigError, match=r"bin\.yaml: not UTF-8 text"):
        load_config(tmp_path / "bin.yaml")


def test_an_alias_bomb_is_refused(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 7):
        prev = f"*a{i - 1}"
        levels.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    lines = problems(tmp_path, "\n".join(levels) + "\n")
    assert any("more than 100000 values (an alias bomb?)" in line for line in lines)


# --------------------------------------------------------------------------- secrets


SECRET = "hunter2-very-secret"


@pytest.mark.parametrize(
    "credentials",
    [
        f"{{username: bob, password: {SECRET}}}",
        f"{{username: bob, password: '{SECRET}', password-env: P}}",
        f"{{username: bob, password-env: '{SECRET}'}}",
        f"{{username-env: '{SECRET}', password-env: P}}",
        f"{{username: bob, password-file: {{{SECRET}: 1}}}}",
        "{username: 12345678901234, password-env: P}",
        f"{{username: bob, password-env: P, extra: '{SECRET}'}}",
        f"{{username: bob, password-env: 'P\n{SECRET}",
    ],
)
def test_a_value_under_credentials_is_never_shown(tmp_path: Path, credentials: str) -> None:
    text = f"version: 1\nregistries:\n  a.io:\n    credentials: {credentials}\n" + MINIMAL_JOB
    lines = problems(tmp_path, text)
    assert lines
    joined = "\n".join(lines)
    assert SECRET not in joined
    assert "12345678901234" not in joined


def test_a_yaml_error_does_not_carry_the_files_text_as_its_context(tmp_path: Path) -> None:
    path = write(tmp_path, f"version: 1\nregistries:\n  a.io: {{password-env: '{SECRET}\n")
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    chained = info.value.__cause__ or info.value.__context__
    assert chained is None
    assert SECRET not in str(info.value)


def test_a_literal_password_is_refused_with_the_way_to_give_one(tmp_path: Path) -> None:
    lines = problems(
        tmp_path,
        f"version: 1\nregistries:\n  a.io:\n    credentials:\n      username: bob\n"
        f"      password: {SECRET}\n" + MINIMAL_JOB,
    )
    assert lines == [
        "sync.yaml:6: registries[a.io].credentials.password: a password is not written in the "
        "file: use password-env (an environment variable) or password-file (a file holding it)"
    ]


# --------------------------------------------------------------------------- cascade


def test_defaults_cascade_and_a_jobs_own_key_replaces_the_whole_default(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        r"""
        version: 1
        defaults:
          referrers: false
          overwrite: never
          destinations: ['prod.example.com/mirror/{repository}']
          tags: {allow: ['v\d+'], latest: 3}
        jobs:
          - name: inherits
            source: dev.example.com/team/a
          - name: overrides
            source: dev.example.com/team/b
            referrers: true
            destinations: [other.example.com/b]
            tags: {include: [stable]}
        """,
    )
    inherits, overrides = config.jobs
    assert inherits.referrer_rules.enabled is False
    assert inherits.overwrite == "never"
    assert inherits.destinations == ("prod.example.com/mirror/{repository}",)
    assert [p.pattern for p in inherits.tags.allow] == [r"v\d+"]
    assert inherits.tags.latest == 3
    assert overrides.referrer_rules.enabled is True
    assert overrides.overwrite == "never"  # not given by the job: inherited
    assert overrides.destinations == ("other.example.com/b",)
    # tags replaced whole: the defaults' allow and latest are gone
    assert overrides.tags.allow == () and overrides.tags.latest is None
    assert overrides.tags.include == ("stable",)


def test_defaults_may_give_the_source(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        version: 1
        defaults:
          source: {registry: dev.example.com, repositories: ['**']}
        jobs:
          - {name: to-prod, destinations: ['prod.example.com/{repository}']}
          - {name: to-disk, destinations: ['ocidir://{name}']}
        """,
    )
    assert all(job.is_catalog for job in config.jobs)
    assert config.jobs[1].destinations == (f"ocidir://{tmp_path}/{{name}}",)


# --------------------------------------------------------------------------- digest


DIGEST_BASE = r"""
version: 1
registries:
  dev.example.com: {tls: verify, limits: {concurrency: 4}}
jobs:
  - name: a
    source: dev.example.com/team/a
    destinations: [prod.example.com/team/a]
    tags: {allow: ['v\d+'], latest: 2}
    referrers: true
  - name: b
    source: dev.example.com/team/b
    destinations: [prod.example.com/team/b]
    interval: 10m
"""

SAME_CONTENT = [
    # comments, key order, quoting, flow versus block style
    r"""
# promotion jobs
version: 1
jobs:
  - destinations:
      - prod.example.com/team/a   # prod
    tags:
      latest: 2
      allow:
        - "v\\d+"
    name: 'a'
    source: "dev.example.com/team/a"
    referrers: {}
  - {name: b, interval: 600s, source: dev.example.com/team/b, destinations: [prod.example.com/team/b]}
registries:
  dev.example.com:
    limits: {concurrency: 4}
    tls: verify
""",
    # jobs reordered, a value moved into defaults, referrers written out
    r"""
version: 1
defaults:
  referrers: {enabled: true}
registries:
  DEV.example.com: {limits: {concurrency: 4}, tls: verify}
jobs:
  - name: b
    source: dev.example.com/team/b
    destinations: [prod.example.com/team/b]
    interval: 0h10m
  - name: a
    source: dev.example.com/team/a
    destinations: [prod.example.com/team/a]
    tags: {latest: 2, allow: ['v\d+']}
""",
]

CHANGED_CONTENT = [
    DIGEST_BASE.replace("latest: 2", "latest: 3"),
    DIGEST_BASE.replace("interval: 10m", "interval: 11m"),
    DIGEST_BASE.replace("referrers: true", "referrers: false"),
    DIGEST_BASE.replace("concurrency: 4", "concurrency: 5"),
    DIGEST_BASE.replace("prod.example.com/team/a]", "prod.example.com/team/a2]"),
    DIGEST_BASE.replace("name: b", "name: c"),
    DIGEST_BASE.replace(r"v\d+", r"v\d*"),
]


def test_digest_is_the_same_for_the_same_content(tmp_path: Path) -> None:
    base = parse_config(DIGEST_BASE, filename="s.yaml", base_dir=tmp_path)
    for text in SAME_CONTENT:
        other = parse_config(text, filename="s.yaml", base_dir=tmp_path)
        assert other.digest == base.digest
        assert dict(other.job_digests) == dict(base.job_digests)


@pytest.mark.parametrize("text", CHANGED_CONTENT)
def test_digest_changes_with_any_value(tmp_path: Path, text: str) -> None:
    assert text != DIGEST_BASE
    base = parse_config(DIGEST_BASE, filename="s.yaml", base_dir=tmp_path)
    assert parse_config(text, filename="s.yaml", base_dir=tmp_path).digest != base.digest


def test_job_digest_changes_only_for_the_job_that_changed(tmp_path: Path) -> None:
    base = parse_config(DIGEST_BASE, filename="s.yaml", base_dir=tmp_path)
    changed = parse_config(
        DIGEST_BASE.replace("latest: 2", "latest: 3"), filename="s.yaml", base_dir=tmp_path
    )
    assert changed.job_digests["a"] != base.job_digests["a"]
    assert changed.job_digests["b"] == base.job_digests["b"]


def test_job_digest_ignores_when_a_job_runs_and_how_registries_are_reached(tmp_path: Path) -> None:
    base = parse_config(DIGEST_BASE, filename="s.yaml", base_dir=tmp_path)
    for text in (
        DIGEST_BASE.replace("interval: 10m", "interval: 11m"),
        DIGEST_BASE.replace("interval: 10m", "schedule: '@daily'"),
        DIGEST_BASE.replace("concurrency: 4", "concurrency: 5"),
    ):
        changed = parse_config(text, filename="s.yaml", base_dir=tmp_path)
        assert changed.digest != base.digest
        assert dict(changed.job_digests) == dict(base.job_digests)


# --------------------------------------------------------------------------- registry options


CREDS_CONFIG = """\
version: 1
registries:
  env.example.com:
    credentials:
      username-env: SYNC_USER
      password-env: SYNC_PASS
  file.example.com:
    credentials: {username: robot, password-file: secrets/pass.txt}
    tls: plain-http
  docker.io:
    tls: insecure
  tls.example.com:
    tls: verify
    ca-file: ca.pem
    limits: {concurrency: 3}
jobs:
  - name: one
    source: env.example.com/a
    destinations: [file.example.com/a]
"""


def _no_resolution(host: str) -> Credentials | None:
    raise AssertionError(f"default resolution asked for {host}")


def test_credentials_from_environment_variables(tmp_path: Path) -> None:
    config = load(tmp_path, CREDS_CONFIG)
    env = {"SYNC_USER": "robot$ci", "SYNC_PASS": "pw-from-env-123"}
    options = config.registry_options("env.example.com", env=env, resolve=_no_resolution)
    assert options.credentials == Credentials(username="robot$ci", password="pw-from-env-123")
    assert options.plain_http is None and options.insecure is False
    assert "pw-from-env-123" not in redact_text("token pw-from-env-123 leaked")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"SYNC_PASS": "x-secret-1"},
            "5: registries[env.example.com].credentials.username-env: "
            "environment variable SYNC_USER is not set",
        ),
        (
            {"SYNC_USER": "u", "SYNC_PASS": ""},
            "6: registries[env.example.com].credentials.password-env: "
            "environment variable SYNC_PASS is empty",
        ),
    ],
)
def test_a_missing_variable_is_named_and_nothing_secret_shown(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    config = load(tmp_path, CREDS_CONFIG)
    with pytest.raises(ConfigError) as info:
        config.registry_options("env.example.com", env=env, resolve=_no_resolution)
    message = str(info.value)
    assert message == f"{tmp_path / 'sync.yaml'}:{expected}"
    assert "x-secret-1" not in message


def test_credentials_from_a_password_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    secret = tmp_path / "secrets" / "pass.txt"
    secret.write_text("pw-from-file-456\n")
    secret.chmod(0o600)
    config = load(tmp_path, CREDS_CONFIG)
    options = config.registry_options("file.example.com", env={}, resolve=_no_resolution)
    assert options.credentials == Credentials(username="robot", password="pw-from-file-456")
    assert options.plain_http is True
    assert "pw-from-file-456" not in redact_text("pw-from-file-456")


def test_an_unreadable_or_empty_password_file_is_named(tmp_path: Path) -> None:
    config = load(tmp_path, CREDS_CONFIG)
    where = f"{tmp_path / 'sync.yaml'}:8: registries[file.example.com].credentials.password-file"
    path = tmp_path / "secrets" / "pass.txt"
    with pytest.raises(ConfigError) as info:
        config.registry_options("file.example.com", env={}, resolve=_no_resolution)
    assert str(info.value) == f"{where}: cannot read {path}: No such file or directory"
    path.mkdir(parents=True)  # a directory: open() fails whoever runs the test
    with pytest.raises(ConfigError) as info:
        config.registry_options("file.example.com", env={}, resolve=_no_resolution)
    assert str(info.value) == f"{where}: cannot read {path}: Is a directory"
    path.rmdir()
    path.write_text("\n")
    with pytest.raises(ConfigError, match=re.escape(f"{where}: {path} is empty")):
        config.registry_options("file.example.com", env={}, resolve=_no_resolution)
    path.write_bytes(b"\xff\xfe-secret-bytes")
    with pytest.raises(ConfigError) as info:
        config.registry_options("file.example.com", env={}, resolve=_no_resolution)
    assert str(info.value) == f"{where}: {path} is not UTF-8 text"


def test_hosts_without_credentials_fall_back_to_the_usual_resolution(tmp_path: Path) -> None:
    config = load(tmp_path, CREDS_CONFIG)
    asked: list[str] = []

    def resolve(host: str) -> Credentials | None:
        asked.append(host)
        return Credentials(username="from", password="docker-config")

    hub = config.registry_options("docker.io", resolve=resolve)
    assert hub.insecure is True and hub.credentials == Credentials("from", "docker-config")
    other = config.registry_options("elsewhere.example.com", resolve=resolve)
    assert other == RegistryOptions(credentials=Credentials("from", "docker-config"))
    assert asked == ["registry-1.docker.io", "elsewhere.example.com"]


def test_default_resolution_reads_the_docker_config(tmp_path: Path) -> None:
    config = load(tmp_path, CREDS_CONFIG)
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text('{"auths": {"elsewhere.example.com": {"auth": "dTpw"}}}')
    options = config.registry_options("elsewhere.example.com", env={"DOCKER_CONFIG": str(docker)})
    assert options.credentials == Credentials(username="u", password="p")


def test_tls_settings_and_ca_file(tmp_path: Path) -> None:
    config = load(tmp_path, CREDS_CONFIG)
    with pytest.raises(
        ConfigError, match=r":14: registries\[tls.example.com\].ca-file: .*ca.pem: no such file"
    ):
        config.registry_options("tls.example.com", resolve=lambda h: None)
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    options = config.registry_options("tls.example.com", resolve=lambda h: None)
    assert options.ca_file == str(tmp_path / "ca.pem")
    assert options.plain_http is False and options.insecure is False
    assert options.max_connections == 3


def test_base_options_are_kept_where_the_file_says_nothing(tmp_path: Path) -> None:
    config = load(tmp_path, CREDS_CONFIG)
    base = RegistryOptions(credentials=Credentials("cli", "flag"), insecure=True, max_connections=9)
    assert config.registry_options("elsewhere.example.com", base=base) is base
    hub = config.registry_options("index.docker.io", base=base, resolve=_no_resolution)
    assert hub.credentials == Credentials("cli", "flag")
    assert hub.insecure is True and hub.max_connections == 9
    env = {"SYNC_USER": "u", "SYNC_PASS": "p"}
    own = config.registry_options("env.example.com", base=base, env=env)
    assert own.credentials == Credentials("u", "p")


def test_unknown_job_name_lists_the_jobs(tmp_path: Path) -> None:
    config = load(tmp_path, CREDS_CONFIG)
    assert config.job("one").name == "one"
    with pytest.raises(ConfigError, match=r"no job named 'two' \(jobs: one\)"):
        config.job("two")


# --------------------------------------------------------------------------- the reference doc


def _doc_examples() -> list[str]:
    doc = Path(__file__).resolve().parents[2] / "docs" / "SYNC-CONFIG.md"
    text = doc.read_text()
    return re.findall(r"```yaml\n(version: 1\n.*?)```", text, flags=re.S)


def test_every_full_example_of_the_reference_loads(tmp_path: Path) -> None:
    examples = _doc_examples()
    assert len(examples) >= 2
    for text in examples:
        config = parse_config(text, filename="doc.yaml", base_dir=tmp_path)
        assert config.jobs


def test_environment_is_not_read_at_load_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNC_USER", raising=False)
    monkeypatch.delenv("SYNC_PASS", raising=False)
    config = load(tmp_path, CREDS_CONFIG)  # variables unset: loading still succeeds
    assert config.registry_settings("env.example.com") is not None
    assert os.environ.get("SYNC_USER") is None
