"""The Kubernetes manifests in ``deploy/``: valid against the Kubernetes schemas,
arguments the CLI accepts, the security context the image needs, and the
invariants each workload depends on (one writer per journal, probes on the
metrics port, as many completions as shards).

Validation is offline: ``kubernetes-validate`` ships the API's JSON schemas.
Every document is checked in strict mode (an unknown field is an error) against
the oldest Kubernetes the manifests claim (1.29: native sidecars, per-index
backoff and pod replacement policy on by default) and the newest schemas the
package has.  Each replicator container's ``args`` are parsed with the real
parser (:func:`replicator.cli.main.build_parser`), and every flag must be one
the command defines, spelled out in full.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from replicator.cli.main import build_parser
from replicator.sync.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
#: The oldest Kubernetes the manifests are written for, and the newest schemas shipped.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
IMAGE = "registry.example/tools/replicator"
UID = 10001

# -- reading the manifests -----------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """One YAML document of ``deploy/``."""

    file: str
    doc: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.file}:{self.doc['kind']}/{self.doc['metadata']['name']}"


@dataclass(frozen=True)
class PodContainer:
    """A container of a workload's pod template, with the pod spec it lives in."""

    manifest: Manifest
    pod: dict[str, Any]
    container: dict[str, Any]
    init: bool

    @property
    def id(self) -> str:
        return f"{self.manifest.doc['kind']}/{self.manifest.doc['metadata']['name']}/{self.container['name']}"

    @property
    def is_replicator(self) -> bool:
        return str(self.container["image"]).split(":")[0] == IMAGE

    @property
    def args(self) -> list[str]:
        return [str(a) for a in self.container.get("args", [])]


def manifest_files() -> list[Path]:
    """Every YAML file of ``deploy/`` but the kustomization."""
    return sorted(p for p in DEPLOY.glob("*.yaml") if p != KUSTOMIZATION)


@functools.cache
def _load() -> tuple[Manifest, ...]:
    out = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append(Manifest(path.name, doc))
    return tuple(out)


def manifests() -> list[Manifest]:
    """Every document of every manifest file (read once; do not change them)."""
    return list(_load())


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload (CronJob, Job, Deployment), None for other kinds."""
    kind = doc["kind"]
    if kind == "CronJob":
        spec: dict[str, Any] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    if kind in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
        spec = doc["spec"]["template"]["spec"]
        return spec
    return None


def pod_containers() -> list[PodContainer]:
    out = []
    for m in manifests():
        pod = pod_spec(m.doc)
        if pod is None:
            continue
        out += [PodContainer(m, pod, c, True) for c in pod.get("initContainers", [])]
        out += [PodContainer(m, pod, c, False) for c in pod["containers"]]
    return out


def replicator_containers() -> list[PodContainer]:
    return [c for c in pod_containers() if c.is_replicator]


def workload(kind: str, name: str) -> dict[str, Any]:
    found = [
        m.doc for m in manifests() if (m.doc["kind"], m.doc["metadata"]["name"]) == (kind, name)
    ]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container_named(pod: dict[str, Any], name: str = "replicator") -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in pod["containers"] if c["name"] == name)
    return found


def flag_value(args: list[str], flag: str) -> str | None:
    """The value after ``flag`` (or of ``flag=value``), None when absent."""
    for i, word in enumerate(args):
        if word == flag:
            return args[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None


# -- checking arguments with the real parser -----------------------------------------


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub: argparse.ArgumentParser = action.choices[command]
            return sub
    return None


def cli_problems(args: list[str]) -> list[str]:
    """Why the CLI would not take ``args`` (empty when it would).

    Parsed with the real parser; then each ``--flag`` must be an option string
    the top-level parser or the named command defines, in full (argparse would
    also accept an unambiguous abbreviation, which a later flag could break).
    """
    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parsed = parser.parse_args(args)
    except SystemExit:
        return [err.getvalue().strip().splitlines()[-1]]
    sub = _subparser(parser, str(getattr(parsed, "command", "")))
    known = {
        o for p in (parser, sub) if p is not None for a in p._actions for o in a.option_strings
    }
    return [
        f"{word.split('=', 1)[0]} is not a flag of `{parsed.command}` (spell flags out in full)"
        for word in args
        if word.startswith("--") and word.split("=", 1)[0] not in known
    ]


def test_the_flag_check_finds_unknown_and_abbreviated_flags() -> None:
    assert cli_problems(["sync", "c.yaml", "--job", "a", "--shard", "0/2"]) == []
    assert (
        "unrecognized arguments: --no-such-flag"
        in cli_problems(["sync", "c.yaml", "--no-such-flag"])[0]
    )
    assert cli_problems(["sync", "c.yaml", "--dry"]) == [
        "--dry is not a flag of `sync` (spell flags out in full)"
    ]
    assert cli_problems(["--log-format", "json", "verify", "c.yaml", "--deep"]) == []
    assert (
        cli_problems(["sync", "c.yaml", "--watch", "--metrics-addr", "0.0.0.0:9469", "--job", "j"])
        == []
    )
    assert cli_problems(["sync", "c.yaml", "--metrics-file", "/t/r.prom", "--wait-lock=60"]) == []


@pytest.mark.parametrize("c", replicator_containers(), ids=lambda c: c.id)
def test_replicator_args_are_flags_the_cli_has(c: PodContainer) -> None:
    assert c.args, "a replicator container must say what to run"
    assert cli_problems(c.args) == []


# -- schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("m", manifests(), ids=lambda m: m.id)
def test_every_manifest_validates_against_the_kubernetes_schema(m: Manifest, version: str) -> None:
    try:
        kubernetes_validate.validate(m.doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{m.id} (Kubernetes {version}): {exc.message} at {list(exc.absolute_path)}")


def test_the_schema_check_catches_a_wrong_field() -> None:
    doc = workload("CronJob", "replicator-promote")
    broken = {**doc, "spec": {**doc["spec"], "concurencyPolicy": "Forbid"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    assert [i["name"] for i in kustomization["images"]] == [IMAGE]
    namespace = kustomization["namespace"]
    for m in manifests():
        assert m.doc["metadata"].get("namespace", namespace) == namespace, m.id


def test_kustomize_renders_the_manifests(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` not tried")
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (m.doc["kind"], m.doc["metadata"]["name"]) for m in manifests()
    )
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "replicator"


# -- what the image needs ----------------------------------------------------------------


@pytest.mark.parametrize("c", pod_containers(), ids=lambda c: c.id)
def test_every_container_runs_unprivileged_on_a_read_only_root(c: PodContainer) -> None:
    pod_ctx = c.pod["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True
    assert (pod_ctx["runAsUser"], pod_ctx["runAsGroup"], pod_ctx["fsGroup"]) == (UID, UID, UID)
    assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c.pod["automountServiceAccountToken"] is False
    ctx = c.container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert not ctx.get("privileged", False)
    assert "memory" in c.container["resources"]["limits"]


def _mounts(c: PodContainer) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in c.container.get("volumeMounts", [])}


def _writable_volume_holding(c: PodContainer, path: str) -> str | None:
    """The writable mount ``path`` lies under, None when it is on the (read-only) root."""
    for mount_path, mount in _mounts(c).items():
        if PurePosixPath(path).is_relative_to(mount_path) and not mount.get("readOnly", False):
            return mount_path
    return None


@pytest.mark.parametrize("c", replicator_containers(), ids=lambda c: c.id)
def test_what_replicator_writes_is_on_a_volume_and_what_it_reads_is_mounted(
    c: PodContainer,
) -> None:
    args = c.args
    journal = flag_value(args, "--journal") or "/var/lib/replicator/replicator/journal.sqlite"
    assert _writable_volume_holding(c, journal) == "/var/lib/replicator"
    metrics = flag_value(args, "--metrics-file")
    if metrics is not None:
        assert _writable_volume_holding(c, metrics) is not None, metrics
    mounts = _mounts(c)
    assert mounts["/config/docker"]["readOnly"] is True
    volumes = {v["name"]: v for v in c.pod["volumes"]}
    secret = volumes[mounts["/config/docker"]["name"]]["secret"]
    assert secret["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    assert secret["defaultMode"] == 0o440  # readable through fsGroup 10001 only
    state = volumes[mounts["/var/lib/replicator"]["name"]]
    assert "persistentVolumeClaim" in state
    assert c.pod["terminationGracePeriodSeconds"] > 30  # SIGTERM: 30 s to stop cleanly


def _sync_config(tmp_path: Path) -> Any:
    cm = workload("ConfigMap", "replicator-sync")
    path = tmp_path / "sync.yaml"
    path.write_text(cm["data"]["sync.yaml"])
    return load_config(path)


@pytest.mark.parametrize("c", replicator_containers(), ids=lambda c: c.id)
def test_the_mounted_config_loads_and_names_the_jobs_the_args_run(
    c: PodContainer, tmp_path: Path
) -> None:
    parsed = build_parser().parse_args(c.args)
    assert parsed.command == "sync"
    config_path = PurePosixPath(parsed.config)
    mount = _mounts(c)[str(config_path.parent)]
    volume = next(v for v in c.pod["volumes"] if v["name"] == mount["name"])
    cm = workload("ConfigMap", volume["configMap"]["name"])
    assert config_path.name in cm["data"]
    config = _sync_config(tmp_path)
    assert parsed.job and all(config.job(name) for name in parsed.job)


def test_every_claim_a_pod_names_is_declared() -> None:
    claims = {
        m.doc["metadata"]["name"] for m in manifests() if m.doc["kind"] == "PersistentVolumeClaim"
    }
    named = {
        v["persistentVolumeClaim"]["claimName"]
        for c in pod_containers()
        for v in c.pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert named == claims


# -- each workload -------------------------------------------------------------------------


def test_the_cronjob_never_overlaps_and_resumes_on_its_volume() -> None:
    cron = workload("CronJob", "replicator-promote")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] <= 3600
    pod = pod_spec(cron)
    assert pod is not None and pod["restartPolicy"] == "Never"
    args = container_named(pod)["args"]
    assert flag_value(args, "--metrics-file") == "/metrics/replicator.prom"
    sidecar = pod["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: it outlives nothing
    assert "/metrics/replicator.prom" in sidecar["args"][0]


def test_the_deployment_is_one_writer_probed_and_scraped_on_the_metrics_port() -> None:
    deployment = workload("Deployment", "replicator-sync")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    template = deployment["spec"]["template"]
    container = container_named(template["spec"])
    args = container["args"]
    assert "--watch" in args
    address = flag_value(args, "--metrics-addr")
    assert address is not None
    port = int(address.rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = template["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


def test_the_indexed_job_has_one_completion_per_shard() -> None:
    job = workload("Job", "replicator-mirror")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    args = container_named(spec["template"]["spec"])["args"]
    shards = flag_value(args, "--shard-from-env")
    assert shards is not None and int(shards) == spec["completions"]
    assert 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["backoffLimitPerIndex"] >= 1
    assert spec["podReplacementPolicy"] == "Failed"  # a retry starts once the failed pod is gone
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert {
        "action": "FailIndex",
        "onExitCodes": {"containerName": "replicator", "operator": "In", "values": [2]},
    } in rules


def test_manifest_ids_are_unique() -> None:
    ids = [m.id for m in manifests()]
    assert len(ids) == len(set(ids))
