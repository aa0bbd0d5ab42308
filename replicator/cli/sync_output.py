"""What ``sync``, ``sync --dry-run`` and ``verify`` print, per job.

Result lines go to stdout (``Copied``, ``Up to date:``, ``Kept``, ``Refused``,
``Failed``; in a dry run ``would copy``, ``would move tag``, ...), then each
job's pruning (``Pruned tag``, ``Deleted manifest``, ``Not pruned``, ``Prune
refused``...; in a dry run ``would prune tag``, ``would delete manifest``) and
the quota pauses (``Rate limit:``); errors and warnings go to stderr with the
logs.  Every figure printed is in the JSON report (``--report``) too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TextIO

from replicator.cli.output import human_size, pluralize
from replicator.engine.report import OK_STATUSES, JobResult, PlannedWrite
from replicator.oci.reference import is_referrers_tag
from replicator.sync.expand import JobPlan, RepositoryPlan
from replicator.sync.mapping import describe_destination
from replicator.sync.prune import JobPrune
from replicator.sync.syncing import SyncOutcome

#: At most this many not-selected tags are named per repository (the rest are counted).
SHOWN_REJECTED = 12


def print_sync(out: TextIO, outcome: SyncOutcome) -> None:
    """Per job: what was copied, up to date, kept, refused or failed."""
    for plan in outcome.expansion.jobs:
        out.write(f"Job {plan.name}\n")
        if plan.error is not None:
            out.write(f"  Failed: {plan.error}\n")
            continue
        results = outcome.job_results(plan.name)
        for index, result in results:
            state = outcome.state(index)
            for line in _result_lines(result, state):
                out.write(f"  {line}\n")
        for repo in plan.repositories:
            for tag, where in repo.immutable_skipped:
                out.write(f"  Immutable, already there: {tag} at {where}\n")
        if not results and not any(r.immutable_skipped for r in plan.repositories):
            out.write("  Nothing selected\n")
        _write_prune(out, outcome, plan.name)
    _write_pauses(out, outcome)


def _result_lines(result: JobResult, state: str) -> list[str]:
    lines = []
    if state in ("copied", "up-to-date"):
        verb = "Copied" if state == "copied" else "Up to date:"
        what = _what_changed(result) if state == "copied" else ""
        # One line per tag: the figures are the job's, summed over its destinations.
        lines.append(f"{verb} {result.source} => {', '.join(result.destinations)}{what}")
    elif state == "refused":
        lines.append(f"Refused {result.source}: no referrer of type {', '.join(result.refused)}")
    elif state == "failed":
        lines.append(f"Failed {result.source}: {result.error}")
    lines += [f"Kept {k} (overwrite: never)" for k in result.kept]
    lines += [f"Backed up {b}" for b in result.backups]
    return lines


def _what_changed(result: JobResult) -> str:
    if result.root_new:
        return f" (new graph: {pluralize(result.new_manifests, 'manifest')})"
    if result.new_referrers:
        return f" ({pluralize(result.new_referrers, 'new referrer')} on an existing image)"
    if result.tags_moved:
        return f" (tag moved: {', '.join(result.tags_moved)})"
    return ""


def print_plan(out: TextIO, outcome: SyncOutcome) -> None:
    """The dry run's plan: per job the selection and what a real run would do."""
    out.write("Plan (dry run: nothing was written)\n")
    for plan in outcome.expansion.jobs:
        out.write(f"Job {plan.name}\n")
        if plan.error is not None:
            out.write(f"  cannot be planned: {plan.error}\n")
            continue
        for line in _catalog_lines(plan):
            out.write(f"  {line}\n")
        results = {r.source: (i, r) for i, r in outcome.job_results(plan.name)}
        for repo in plan.repositories:
            for line in _repository_plan(repo, results, outcome):
                out.write(f"  {line}\n")
        _write_prune(out, outcome, plan.name)
    _write_pauses(out, outcome)
    if outcome.run is not None:
        out.write(_plan_total(outcome.run.report.planned, outcome.run.report.planned_bytes) + "\n")


def _catalog_lines(plan: JobPlan) -> list[str]:
    if not plan.catalog:
        return []
    chosen = [d.repository for d in plan.catalog if d.selected]
    left = [f"{d.repository} ({d.reason})" for d in plan.catalog if not d.selected]
    lines = [f"repositories: {', '.join(chosen) or 'none'}"]
    if left:
        lines.append(f"not selected: {'; '.join(left)}")
    return lines


def _repository_plan(
    repo: RepositoryPlan, results: dict[str, tuple[int, JobResult]], outcome: SyncOutcome
) -> list[str]:
    dests = ", ".join(describe_destination(d) for d in repo.destinations)
    lines = [f"{repo.source} => {dests}"]
    lines.append(f"  tags selected: {', '.join(repo.selected) or 'none'}")
    rejected = [
        f"{d.tag} ({d.reason})"
        for d in repo.decisions
        if not d.selected and not is_referrers_tag(d.tag)
    ]
    if rejected:
        more = len(rejected) - SHOWN_REJECTED
        shown = "; ".join(rejected[:SHOWN_REJECTED]) + (f"; and {more} more" if more > 0 else "")
        lines.append(f"  not selected: {shown}")
    for tag, where in repo.immutable_skipped:
        lines.append(f"  immutable, already there: {tag} at {where}")
    for tag in repo.selected:
        found = results.get(str(repo.source.with_tag(tag)))
        if found is None:
            continue
        index, result = found
        state = outcome.state(index)
        lines.append(f"  {_plan_line(tag, result, state)}")
    return lines


def _plan_line(tag: str, result: JobResult, state: str) -> str:
    if state == "refused":
        return f"would refuse {tag}: no referrer of type {', '.join(result.refused)}"
    if state == "failed":
        return f"cannot copy {tag}: {result.error}"
    if result.kept and not result.tags_moved:
        return f"would keep {', '.join(result.kept)} (overwrite: never)"
    if result.root_new:
        line = f"would copy {tag}: new graph, {pluralize(result.new_manifests, 'manifest')}"
    elif result.new_referrers:
        line = f"would copy {tag}: {pluralize(result.new_referrers, 'new referrer')} on an existing image"
    elif result.new_manifests:
        line = f"would copy {tag}: {pluralize(result.new_manifests, 'missing manifest')}"
    elif result.tags_moved:
        line = f"would move tag {', '.join(result.tags_moved)} to {result.digest}"
    else:
        return f"up to date: {tag}"
    if result.backups:
        line += f"; backup first: {', '.join(result.backups)}"
    return line


def _plan_total(planned: Iterable[PlannedWrite], planned_bytes: int) -> str:
    counts: dict[str, int] = {}
    for p in planned:
        counts[p.action] = counts.get(p.action, 0) + 1
    return (
        f"Total: {pluralize(counts.get('push', 0), 'manifest')} to push, "
        f"{pluralize(counts.get('upload', 0), 'blob')} to upload ({human_size(planned_bytes)}), "
        f"{pluralize(counts.get('mount', 0), 'mount')}, {pluralize(counts.get('tag', 0), 'tag')} "
        f"to set, {pluralize(counts.get('index', 0), 'referrers index', 'referrers indexes')} "
        f"to update, {pluralize(counts.get('backup', 0), 'backup')}"
    )


def print_verify(out: TextIO, outcome: SyncOutcome) -> None:
    """Every difference, one per line, every tag that could not be checked, then the verdict."""
    for d in outcome.differences:
        out.write(d.describe() + "\n")
    failed = 0
    if outcome.run is not None:
        for result in outcome.run.report.jobs:
            if result.status == "refused":
                types = ", ".join(result.refused)
                out.write(f"not promoted (gate: no referrer of type {types}): {result.source}\n")
            elif result.status not in OK_STATUSES:
                failed += 1
                out.write(f"cannot check {result.source}: {result.error}\n")
    for plan in outcome.expansion.jobs:
        if plan.error is not None:
            out.write(f"cannot check job {plan.name}: {plan.error}\n")
    checked = 0 if outcome.run is None else len(outcome.run.report.jobs) - failed
    unchecked = failed + len(outcome.expansion.errors)
    if outcome.differences:
        out.write(
            f"Verify: {pluralize(len(outcome.differences), 'difference')} in "
            f"{pluralize(checked, 'tag')} checked\n"
        )
    elif outcome.exit_code == 0:
        out.write(
            f"Verified: {pluralize(checked, 'tag')}, every graph complete at every destination\n"
        )
    if unchecked:
        what = pluralize(unchecked, "tag or job", "tags or jobs")
        out.write(f"Verify incomplete: {what} could not be checked\n")


def _write_prune(out: TextIO, outcome: SyncOutcome, name: str) -> None:
    for prune in outcome.prunes:
        if prune.name == name:
            for line in prune_lines(prune):
                out.write(f"  {line}\n")


def prune_lines(prune: JobPrune) -> list[str]:
    """What one job's pruning did (or, in a dry run, would do), one line each."""
    lines = [f"Prune skipped: {why}" for why in prune.skipped]
    if prune.refused is not None:
        lines.append(f"Prune refused: {prune.refused}")
        for dest in prune.destinations:
            if dest.tags:
                shown = ", ".join(t for t, _ in dest.tags)
                lines.append(f"  would have pruned at {dest.destination}: {shown}")
        return lines
    would = "would " if prune.dry_run else ""
    for dest in prune.destinations:
        alone = dict(dest.untagged)
        for tag, digest in dest.tags:
            why = alone.get(tag, digest)
            verb = "would prune" if prune.dry_run else "Pruned"
            lines.append(f"{verb} tag {tag} at {dest.destination} ({why})")
        verb = "would delete" if prune.dry_run else "Deleted"
        lines += [f"{verb} manifest {d} at {dest.destination}" for d in dest.manifests]
        lines += [f"Not pruned: {w} at {dest.destination}: {r}" for w, r in dest.kept]
        lines += dest.notes
    if prune.error is not None:
        lines.append(f"Prune failed: {prune.error}")
    elif prune.tags_pruned:
        done, gone = ("would be pruned", "would be deleted") if would else ("pruned", "deleted")
        lines.append(
            f"Prune: {pluralize(prune.tags_pruned, 'tag')} {done}, "
            f"{pluralize(prune.manifests_deleted, 'manifest')} {gone} (prune.max {prune.max})"
        )
    return lines


def _write_pauses(out: TextIO, outcome: SyncOutcome) -> None:
    for host, counts in sorted(outcome.rate_limit_pauses.items()):
        seconds = counts.get("paused_ms", 0) / 1000
        out.write(
            f"Rate limit: requests to {host} paused {pluralize(counts.get('pauses', 0), 'time')} "
            f"({seconds:.1f} s in all): fewer than limits.min-remaining requests were left\n"
        )
