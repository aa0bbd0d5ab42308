"""Turn ``sync_results.json`` into ``RESULTS-sync.md`` and ``sync_results.png``.

    python -m benchmarks.sync_report [--results benchmarks/sync_results.json]
                                     [--compare OTHER.json] [--out benchmarks]

Every timed figure is a median over the repetitions with the raw values next to
it; ratios between tools are ratios of medians, with the per-repetition ratios
(both tools ran back to back in each repetition) beside them.  Request counts
come from the counted runs (one per tool, through counting proxies).
``--compare`` adds a section with another build's figures (a results file written
by ``python -m benchmarks.sync_bench --replicator PATH --out OTHER.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO_ROOT
from benchmarks.sync_bench import COPY_R, SKOPEO_SYNC, SYNC_REFERRERS, SYNC_SUBJECTS

MIB = 1024 * 1024
#: Figures measured before ``sync`` existed (the issue): ``copy -r --from-file``
#: on the same worlds next to ``skopeo sync``.
BEFORE = {
    60: {"wall_s": 4.2, "rss_mib": 59.0},
    600: {"wall_s": 43.6, "rss_mib": 197.0, "skopeo_wall_s": 40.9},
}
PHASE_NAMES = {
    "cold": "cold (fresh destination)",
    "resync": "re-sync (everything present)",
    "immutable": "re-sync, `immutable: ['*']`",
}


def med(values: Sequence[float]) -> float:
    """Median (0 for an empty list)."""
    return statistics.median(values) if values else 0.0


def raw(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """Raw values, comma-separated."""
    return ", ".join(fmt.format(v) for v in values)


def verdict(ok: bool) -> str:
    """Target met or not."""
    return "**met**" if ok else "**missed**"


# -- access ----------------------------------------------------------------------------


def runs(size: dict[str, Any], tool: str, phase: str) -> list[dict[str, Any]]:
    """The timed measurements of ``tool``'s ``phase``, in repetition order."""
    return [r["phases"][phase] for r in size["timed"] if r["tool"] == tool and phase in r["phases"]]


def series(size: dict[str, Any], tool: str, phase: str, key: str) -> list[float]:
    """One figure of every repetition (``wall_s``, ``cpu_s``, ``max_rss_mib``)."""
    return [float(m[key]) for m in runs(size, tool, phase)]


def extra_series(size: dict[str, Any], tool: str, phase: str, key: str) -> list[Any]:
    """One ``extra`` entry of every repetition."""
    return [m["extra"].get(key) for m in runs(size, tool, phase)]


def registry_cpu(size: dict[str, Any], tool: str, phase: str) -> list[float]:
    """Both registries' CPU seconds during each repetition."""
    return [sum(v.values()) for v in extra_series(size, tool, phase, "registry_cpu_s") if v]


def paired(size: dict[str, Any], num: tuple[str, str], den: tuple[str, str]) -> list[float]:
    """Per-repetition wall-time ratios ``num / den`` of two (tool, phase)s."""
    by_rep: dict[int, dict[tuple[str, str], float]] = {}
    for r in size["timed"]:
        for phase, m in r["phases"].items():
            by_rep.setdefault(r["rep"], {})[(r["tool"], phase)] = m["wall_s"]
    return [v[num] / v[den] for v in by_rep.values() if num in v and den in v and v[den] > 0]


def ratio(size: dict[str, Any], num: tuple[str, str], den: tuple[str, str]) -> float | None:
    """Ratio of the median wall times of two (tool, phase)s."""
    n = med(series(size, *num, "wall_s"))
    d = med(series(size, *den, "wall_s"))
    return n / d if n and d else None


def counted(size: dict[str, Any], tool: str, phase: str) -> dict[str, Any] | None:
    """The counted run of ``tool``'s ``phase``, if any."""
    entry: dict[str, Any] | None = size.get("counted", {}).get(tool, {}).get(phase)
    return entry


def requests(entry: dict[str, Any]) -> int:
    """Requests at the source and at the destination together."""
    return int(entry["src"]["requests_total"]) + int(entry["dst"]["requests_total"])


def nodes(size: dict[str, Any]) -> int:
    """Graph nodes at the source: manifests + blobs reachable, referrers included."""
    return int(size["world"]["graph_nodes"])


def load_range(size: dict[str, Any], tools: Sequence[str] | None = None) -> tuple[float, float]:
    """Lowest and highest 1-minute load average recorded around the timed commands."""
    loads = [
        x
        for r in size["timed"]
        if tools is None or r["tool"] in tools
        for m in r["phases"].values()
        for x in m["extra"].get("loadavg_1m", [])
    ]
    return (min(loads), max(loads)) if loads else (0.0, 0.0)


def tool_list(size: dict[str, Any]) -> list[str]:
    """The tools of a size, in the order they were defined."""
    order = [SKOPEO_SYNC, SYNC_SUBJECTS, SYNC_REFERRERS, COPY_R]
    present = {r["tool"] for r in size["timed"]}
    return [t for t in order if t in present]


def sizes(results: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """``(tags, size results)`` in increasing order."""
    return sorted((int(k), v) for k, v in results["sizes"].items())


# -- sections --------------------------------------------------------------------------


def machine_section(results: dict[str, Any]) -> list[str]:
    """The machine, the tools, the commit."""
    m = results["machine"]
    return [
        "## Machine and method",
        "",
        f"- {m['nproc']} CPUs (`nproc`), {m['cpu_model']}, {m['mem_gib']} GiB RAM, "
        f"Linux {m['kernel']}; Python {m['python']}",
        f"- {results.get('replicator_version') or m['replicator']} "
        f"(`{results.get('replicator')}`, {results.get('label')}); {m['skopeo']}; "
        f"{m['docker_registry']}",
        f"- commit under test: `{m['git_head']}`; run at {m['date']}; whole run "
        f"{results['total_s']} s",
        f"- {m.get('storage', '')}; Python bytecode: {m.get('bytecode', 'as found')}",
        "- each timed command is a child process (wall, user+system CPU, peak RSS from "
        "`wait4`, `benchmarks/harness.py`); the registries' CPU (`/proc/<pid>/stat`) and the "
        "1-minute load average before and after each command are recorded; tools alternate "
        "order between repetitions; every tool gets a fresh destination registry; request "
        "counts come from one further run of each tool through counting proxies "
        "(`tests/infra/proxy.py`) in front of the source and the destination",
        "",
    ]


def world_lines(results: dict[str, Any]) -> list[str]:
    """What each world holds."""
    out = [
        "## The worlds",
        "",
        "| tags | repositories | kinds | manifests in the registry | graph nodes at the source "
        "(manifests + blobs) | blob bytes | built in |",
        "|---:|---:|---|---:|---|---:|---:|",
    ]
    for tags, size in sizes(results):
        w = size["world"]
        kinds = ", ".join(f"{n} {k}" for k, n in w["kinds"].items())
        g = w["graph_at_source"]
        out.append(
            f"| {tags} | {w['repositories']} | {kinds} | {w['manifests']} | "
            f"{nodes(size)} ({g['manifests']} + {g['blobs']}) | {w['blob_bytes']} | "
            f"{w['build_s']} s |"
        )
    out += [
        "",
        "Graph nodes do not count the fallback referrers indexes (`sha256-<hex>` tags: one per "
        "subject with referrers), which are in the registry but are not part of any graph.",
        "",
    ]
    return out


def _cell(value: float | None, limit: float, fmt: str = "{:.2f}") -> str:
    if value is None:
        return "not run"
    return f"{fmt.format(value)} ({verdict(value <= limit)})"


def _target_values(size: dict[str, Any], tags: int) -> dict[str, float | None]:
    """The issue's targets' figures for one size."""
    out: dict[str, float | None] = {
        "subjects": ratio(size, (SYNC_SUBJECTS, "cold"), (SKOPEO_SYNC, "cold")),
        "graph": ratio(size, (SYNC_REFERRERS, "cold"), (SKOPEO_SYNC, "cold")),
        "noop_wall": ratio(size, (SYNC_REFERRERS, "resync"), (SYNC_REFERRERS, "cold")),
        "noop_per_node": None,
        "immutable_per_tag": None,
        "rss": max(series(size, SYNC_REFERRERS, "cold", "max_rss_mib"), default=None),
    }
    resync = counted(size, SYNC_REFERRERS, "resync")
    if resync:
        out["noop_per_node"] = requests(resync) / nodes(size)
    imm = counted(size, SYNC_REFERRERS, "immutable")
    if imm:
        out["immutable_per_tag"] = requests(imm) / tags
    return out


def targets_section(results: dict[str, Any]) -> list[str]:
    """Every target of the issue at each size (the 600-tag column is the one judged)."""
    rows: list[tuple[str, str, float]] = [
        ("subjects", "cold `sync` (`referrers: false`) wall / `skopeo sync` wall", 0.5),
        ("graph", "cold `sync` with referrers (whole graph) / `skopeo sync` (subjects)", 1.0),
        ("noop_per_node", "no-op re-sync with referrers: requests (src + dst) per graph node", 1.5),
        ("noop_wall", "no-op re-sync with referrers: wall / cold `sync` with referrers", 0.1),
        ("immutable_per_tag", "re-sync with `immutable: ['*']`: requests per tag", 0.3),
        ("rss", "peak RSS of cold `sync` with referrers, MiB (highest repetition)", 150.0),
    ]
    all_sizes = sizes(results)
    values = {tags: _target_values(size, tags) for tags, size in all_sizes}
    head = " | ".join(f"{tags} tags" for tags, _ in all_sizes)
    out = [
        "## Targets at a glance",
        "",
        "The issue's targets are stated for the 600-tag world; the 60-tag figures are shown "
        "for the growth.  Wall times: registries' storage in RAM (tmpfs).",
        "",
        f"| target | limit | {head} |",
        "|---|---:|" + "---|" * len(all_sizes),
    ]
    for key, text, limit in rows:
        fmt = "{:.0f}" if key == "rss" else "{:.2f}"
        limit_text = f"< {limit:.0f}" if key == "rss" else f"≤ {limit}"
        cells = " | ".join(_cell(values[t][key], limit, fmt) for t, _ in all_sizes)
        out.append(f"| {text} | {limit_text} | {cells} |")
    out.append("")
    for tags, size in all_sizes:
        lo, hi = load_range(size)
        subj = paired(size, (SYNC_SUBJECTS, "cold"), (SKOPEO_SYNC, "cold"))
        graph = paired(size, (SYNC_REFERRERS, "cold"), (SKOPEO_SYNC, "cold"))
        out.append(
            f"- {tags} tags: per-repetition ratios: subjects / skopeo {raw(subj)}; graph / "
            f"skopeo {raw(graph)}; 1-minute load average during the timed runs "
            f"{lo:.2f}-{hi:.2f}."
        )
    return [*out, ""]


def _window(size: dict[str, Any], tool: str, phase: str) -> str:
    """Median seconds before the first request and after the last one (two cells)."""
    first, tail = [], []
    for m in runs(size, tool, phase):
        w = m["extra"].get("requests_window", {})
        if "first_request_s" in w:
            first.append(float(w["first_request_s"]))
            tail.append(float(w["after_last_s"]))
    return f"{med(first):.2f} | {med(tail):.2f}" if first else "- | -"


def timed_section(results: dict[str, Any]) -> list[str]:
    """Every tool and phase at every size: wall, CPU, peak RSS, registries' CPU, journal."""
    out = [
        "## Timed runs",
        "",
        "| tags | tool | phase | wall s (median) | wall s (raw) | CPU s | peak RSS MiB | "
        "registries' CPU s | to first request s | after last request s | journal KiB | "
        "load (1 min) | tags verified |",
        "|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for tags, size in sizes(results):
        for tool in tool_list(size):
            phases = next(r["phases"] for r in size["timed"] if r["tool"] == tool)
            for phase in phases:
                walls = series(size, tool, phase, "wall_s")
                journal = [j for j in extra_series(size, tool, phase, "journal_bytes") if j]
                loads = [x for v in extra_series(size, tool, phase, "loadavg_1m") for x in v]
                ok = [t for t in extra_series(size, tool, phase, "tags_ok") if t is not None]
                out.append(
                    f"| {tags} | {tool} | {phase} | {med(walls):.2f} | {raw(walls)} | "
                    f"{med(series(size, tool, phase, 'cpu_s')):.2f} | "
                    f"{med(series(size, tool, phase, 'max_rss_mib')):.0f} | "
                    f"{med(registry_cpu(size, tool, phase)):.2f} | "
                    f"{_window(size, tool, phase)} | "
                    f"{f'{med(journal) / 1024:.0f}' if journal else '-'} | "
                    f"{f'{min(loads):.1f}-{max(loads):.1f}' if loads else '-'} | "
                    f"{', '.join(str(t) for t in ok) if ok else '-'} |"
                )
    out += [
        "",
        "*to first request* / *after last request*: from the registries' access logs (the "
        "wall clock just before the command was launched, to the first and from the last "
        "request either registry logged): start-up (interpreter, imports, config, expansion, "
        "journal) and the end (output, report, journal close).  "
        "*journal KiB*: the size of that command's journal (SQLite file, `-wal`, `-shm`) after "
        "the phase; each tool's phases share one journal (a re-sync adds its own run to it).  "
        "*tags verified*: tags at the destination with the source's digest after the cold run.",
        "",
    ]
    return out


def growth_section(results: dict[str, Any]) -> list[str]:
    """How cost grows with the world: per-tag figures and bytes of memory per graph node."""
    all_sizes = sizes(results)
    out = [
        "## How cost grows",
        "",
        "Cold runs, medians.  *Bytes per graph node*: peak RSS / graph nodes at the source; "
        "*marginal*: (peak RSS at the larger size - at the smaller) / (graph nodes at the larger "
        "- at the smaller), i.e. what each further node costs beyond the process itself.",
        "",
        "| tool | tags | wall s | wall ms / tag | CPU s | CPU ms / tag | peak RSS MiB | "
        "bytes / graph node | journal KiB | journal bytes / tag |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tool in tool_list(all_sizes[0][1]):
        for tags, size in all_sizes:
            wall = med(series(size, tool, "cold", "wall_s"))
            cpu = med(series(size, tool, "cold", "cpu_s"))
            rss = med(series(size, tool, "cold", "max_rss_mib"))
            journal = [j for j in extra_series(size, tool, "cold", "journal_bytes") if j]
            jb = med(journal)
            out.append(
                f"| {tool} | {tags} | {wall:.2f} | {wall / tags * 1000:.1f} | {cpu:.2f} | "
                f"{cpu / tags * 1000:.1f} | {rss:.0f} | {rss * MIB / nodes(size):,.0f} | "
                f"{f'{jb / 1024:.0f}' if journal else '-'} | "
                f"{f'{jb / tags:,.0f}' if journal else '-'} |"
            )
    out.append("")
    if len(all_sizes) >= 2:
        (t0, s0), (t1, s1) = all_sizes[0], all_sizes[-1]
        for tool in tool_list(s0):
            r0 = med(series(s0, tool, "cold", "max_rss_mib"))
            r1 = med(series(s1, tool, "cold", "max_rss_mib"))
            w0 = med(series(s0, tool, "cold", "wall_s"))
            w1 = med(series(s1, tool, "cold", "wall_s"))
            dn = nodes(s1) - nodes(s0)
            out.append(
                f"- {tool}: marginal memory {(r1 - r0) * MIB / dn:,.0f} bytes per graph node "
                f"({t0} → {t1} tags: {r0:.0f} → {r1:.0f} MiB); wall time x{w1 / w0:.1f} for "
                f"x{t1 / t0:.0f} tags"
            )
        out.append("")
    out += before_lines(results)
    return out


def before_lines(results: dict[str, Any]) -> list[str]:
    """The figures measured before ``sync`` existed, next to this run's."""
    out = [
        "Before this work (the issue: `copy -r --from-file` on such a world next to `skopeo "
        "sync`, another machine state) against this run:",
        "",
        "| tags | before: `copy -r` wall s | before: peak RSS MiB | now: `sync` with referrers "
        "wall s | now: peak RSS MiB | now: `copy -r` wall s | now: `copy -r` peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tags, size in sizes(results):
        before = BEFORE.get(tags)
        if before is None:
            continue
        cw = series(size, COPY_R, "cold", "wall_s")
        cr = series(size, COPY_R, "cold", "max_rss_mib")
        out.append(
            f"| {tags} | {before['wall_s']} | {before['rss_mib']:.0f} | "
            f"{med(series(size, SYNC_REFERRERS, 'cold', 'wall_s')):.2f} | "
            f"{med(series(size, SYNC_REFERRERS, 'cold', 'max_rss_mib')):.0f} | "
            f"{f'{med(cw):.2f}' if cw else 'not run'} | {f'{med(cr):.0f}' if cr else 'not run'} |"
        )
    return [*out, ""]


def counted_section(results: dict[str, Any]) -> list[str]:
    """Requests of every tool and phase, per graph node and per tag."""
    out = [
        "## Requests (counted runs, through proxies)",
        "",
        "| tags | tool | phase | src requests | dst requests | together | per graph node | "
        "per tag | blob bytes src→ | blob bytes →dst | dst graph after cold |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    detail: list[str] = []
    for tags, size in sizes(results):
        for tool, entry in size.get("counted", {}).items():
            graph = entry.get("dst_graph", {})
            for phase, c in entry.items():
                if phase == "dst_graph":
                    continue
                total = requests(c)
                g = f"{graph.get('manifests')} + {graph.get('blobs')}" if phase == "cold" else ""
                out.append(
                    f"| {tags} | {tool} | {phase} | {c['src']['requests_total']} | "
                    f"{c['dst']['requests_total']} | {total} | {total / nodes(size):.3f} | "
                    f"{total / tags:.2f} | {c['src']['blob_bytes_down']} | "
                    f"{c['dst']['blob_bytes_up']} | {g} |"
                )
                by = "; ".join(
                    f"{side}: "
                    + ", ".join(f"{k} {v}" for k, v in c[side]["requests_by_kind"].items())
                    for side in ("src", "dst")
                )
                detail.append(f"- {tags} tags, {tool}, {phase}: {by or 'none'}")
    return [*out, "", "Requests by method and kind:", "", *detail, ""]


def compare_section(results: dict[str, Any], other: dict[str, Any] | None) -> list[str]:
    """Another build's cold and re-sync figures next to this one's (``--compare``)."""
    if other is None:
        return []
    out = [
        f"## Compared with {other.get('label')} (`{other.get('replicator')}`)",
        "",
        "| tags | tool | phase | wall s: this / other | CPU s: this / other | "
        "peak RSS MiB: this / other |",
        "|---:|---|---|---|---|---|",
    ]
    for tags, size in sizes(results):
        theirs = other["sizes"].get(str(tags))
        if theirs is None:
            continue
        for tool in tool_list(size):
            if tool == SKOPEO_SYNC:
                continue
            for phase in ("cold", "resync"):
                cells = []
                for key, fmt in (
                    ("wall_s", "{:.2f}"),
                    ("cpu_s", "{:.2f}"),
                    ("max_rss_mib", "{:.0f}"),
                ):
                    a = med(series(size, tool, phase, key))
                    b = med(series(theirs, tool, phase, key))
                    cells.append(f"{fmt.format(a)} / {fmt.format(b)}")
                out.append(f"| {tags} | {tool} | {phase} | {' | '.join(cells)} |")
    return [*out, ""]


# -- plot ------------------------------------------------------------------------------


#: One colour per tool in every panel.
COLOURS = {SKOPEO_SYNC: "C0", SYNC_SUBJECTS: "C1", SYNC_REFERRERS: "C2", COPY_R: "C3"}


def _curve(size: dict[str, Any], tool: str, phase: str, key: str) -> float:
    """Median of one figure (``journal_bytes`` from ``extra``), NaN when not measured."""
    if key == "journal_bytes":
        vals = [float(j) for j in extra_series(size, tool, phase, key) if j]
    else:
        vals = series(size, tool, phase, key)
    return med(vals) if vals else float("nan")


def plot(results: dict[str, Any], path: Path) -> None:
    """Six panels against tags, one line per tool: totals, per-tag figures, memory, re-sync."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_sizes = sizes(results)
    xs = [tags for tags, _ in all_sizes]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    # (axis, phase, key, title, scale: per tag or a unit, log y)
    panels = [
        (axes[0][0], "cold", "wall_s", "cold wall time, s", None, True),
        (axes[0][1], "cold", "wall_s", "cold wall time per tag, ms", "tag-ms", False),
        (axes[0][2], "cold", "cpu_s", "cold CPU of the tool per tag, ms", "tag-ms", False),
        (axes[1][0], "cold", "max_rss_mib", "cold peak RSS, MiB", None, False),
        (
            axes[1][1],
            "cold",
            "journal_bytes",
            "journal after the cold run, bytes per tag",
            "tag",
            False,
        ),
        (axes[1][2], "resync", "wall_s", "re-sync (everything present) wall, s", None, True),
    ]
    for ax, phase, key, title, scale, logy in panels:
        for tool in tool_list(all_sizes[0][1]):
            ys = [_curve(size, tool, phase, key) for _, size in all_sizes]
            if scale == "tag-ms":
                ys = [y / t * 1000 for y, t in zip(ys, xs, strict=True)]
            elif scale == "tag":
                ys = [y / t for y, t in zip(ys, xs, strict=True)]
            if any(y == y for y in ys):  # not all NaN
                ax.plot(xs, ys, marker="o", color=COLOURS[tool], label=tool)
        if key == "max_rss_mib":
            ax.axhline(150, color="grey", linestyle="--", linewidth=1, label="target < 150 MiB")
            ax.set_ylim(bottom=0)
        if phase == "resync":
            ys = [_curve(size, SYNC_REFERRERS, "immutable", "wall_s") for _, size in all_sizes]
            ax.plot(
                xs,
                ys,
                marker="s",
                linestyle="--",
                color=COLOURS[SYNC_REFERRERS],
                label=f"{SYNC_REFERRERS}, immutable: ['*']",
            )
        if not logy and key != "max_rss_mib":
            ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.set_xlabel("tags")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xticks([], minor=True)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("replicator sync vs skopeo sync, registries in RAM (medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------


def render(results: dict[str, Any], other: dict[str, Any] | None = None, notes: str = "") -> str:
    """The whole RESULTS-sync.md."""
    lines = [
        "# `replicator sync` benchmark",
        "",
        "Produced by `bash scripts/bench-sync.sh` (`python -m benchmarks.sync_bench`, then "
        "`python -m benchmarks.sync_report`); raw data in `benchmarks/sync_results.json`, plot "
        "in `benchmarks/sync_results.png`.",
        "",
        *targets_section(results),
        *machine_section(results),
        *world_lines(results),
        *timed_section(results),
        *growth_section(results),
        *counted_section(results),
        *compare_section(results, other),
    ]
    if notes:
        lines += [notes.rstrip(), ""]
    return "\n".join(lines)


#: Everything from this line on in RESULTS-sync.md is written by hand and kept as it is
#: when the report is generated again.
NOTES_MARK = "<!-- notes: written by hand, kept by sync_report.py -->"


def kept_notes(path: Path) -> str:
    """The hand-written part of an existing report (from :data:`NOTES_MARK` on), or the mark."""
    if path.exists():
        text = path.read_text()
        at = text.find(NOTES_MARK)
        if at >= 0:
            return text[at:]
    return NOTES_MARK + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    bench = REPO_ROOT / "benchmarks"
    p.add_argument("--results", type=Path, default=bench / "sync_results.json")
    p.add_argument("--compare", type=Path, default=None, help="another build's results file")
    p.add_argument("--out", type=Path, default=bench)
    args = p.parse_args(argv)
    results = json.loads(args.results.read_text())
    other = json.loads(args.compare.read_text()) if args.compare else None
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "RESULTS-sync.md"
    (target).write_text(render(results, other, kept_notes(target)))
    plot(results, args.out / "sync_results.png")
    print(f"wrote {args.out / 'RESULTS-sync.md'} and {args.out / 'sync_results.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
