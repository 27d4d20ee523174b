"""The per-run auditor report: one static HTML page, reports/runs/<run id>/index.html.

It answers an auditor's questions about a run from the lakehouse's tables alone, read with delta-rs'
SQL engine (no Spark): what came in and what was quarantined, whom the consent gate excluded and why,
how many records and profiles each purpose may use, which profiles changed, how matches and clusters
are distributed, which model resolved them, and whether the quality gate passed. Counts only: no
person's values or ids, not even pseudonymous profile ids.

The page is self-contained and opens offline: charts are matplotlib SVG inlined with their text kept
as text, the Splink model charts are copied beside it and framed, and nothing loads from a network.
Tables are read as the run left them (see RunResults), so a report regenerated later shows the same figures.

    python -m jobs.report --run-id <run id>
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import pyarrow as pa
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

from jobs import delta_io
from jobs import run_queries as q
from jobs.config import PUBLISHED_TABLES, PipelineConfig, TablePaths, load_config, names_run
from jobs.errors import IdresError
from jobs.files import write_whole
from jobs.linkage import latest_model
from jobs.publication import JOB as PUBLISH_JOB
from jobs.publication import complete_for_readers
from jobs.run_queries import RunQuery
from jobs.runner import job_arg_parser

matplotlib.use("Agg")  # headless: never a GUI backend, whoever imports pyplot later

REPORT_FILE = "index.html"
QUALITY_FILE = "quality.json"
MODEL_FOLDER = "model"
NOT_AVAILABLE = "not available for this run"
PROFILE_EVENTS = ("created", "merged", "split", "moved", "retired")
GOLD_CHANGES = ("inserted", "updated", "retired")
COLOURS = ("#3b6ea8", "#e08a2e", "#5a9e57", "#b5473e", "#7d5fa6", "#8c8c8c")


@dataclass(frozen=True)
class ResultTable:
    """A query result as the page shows it; rows is None when a table it reads does not exist."""

    id: str
    caption: str
    columns: list[str]
    rows: list[list[Any]] | None


def unpublished_candidates(tables: TablePaths, run_id: str) -> dict[str, Path]:
    """The staged tables this run wrote that no gate published (publishing removes the staging): a run the gate
    failed is reported on what it would have published, not on the previous run's published tables."""
    candidates = {}
    for name in PUBLISHED_TABLES:
        staged = tables.staged(name)
        if delta_io.table_exists(staged) and delta_io.history(staged)[0].get("run_id") == run_id:
            candidates[name] = staged
    return candidates


class RunResults:
    """The report's queries for one run, each executed once (a table and a chart may show one result).

    Each table is read as the run left it (delta_io.versions_as_run_left: time travel), so a report regenerated
    after later runs still shows this run's figures, or "not available" where those versions are gone. The
    resolution and gold tables are the run's own only when it published them or left them staged: a run that
    did neither (its gate failed and the candidates were replaced since, or it ended before) shows none. A run
    that committed nothing (or a mistyped run id) shows none either, never the current figures as its own.
    """

    def __init__(self, tables: TablePaths, run_id: str) -> None:
        self.tables, self.run_id = tables, run_id
        self.candidates = unpublished_candidates(tables, run_id)
        existing = [p for p in tables.all().values() if delta_io.table_exists(p)]
        self.versions = delta_io.versions_as_run_left(existing, run_id)
        published = delta_io.committed_in_run(tables.unify_runs, PUBLISH_JOB, run_id)
        self.not_its_own = set() if published else {getattr(tables, name) for name in PUBLISHED_TABLES}
        self._results: dict[int, pa.Table | None] = {}

    def table(self, query: RunQuery) -> pa.Table | None:
        """The query's result; None when a table it reads is missing, held no version when the run ended, or holds
        another run's resolution."""
        if id(query) not in self._results:
            result = None
            paths = query.paths(self.tables, self.candidates)
            if query.available(self.tables, self.candidates) and not self.not_its_own & set(paths.values()):
                staged = set(self.candidates.values())
                versions = {alias: self.versions[path] for alias, path in paths.items() if path not in staged}
                if None not in versions.values():
                    result = query.execute(self.tables, self.run_id, self.candidates, versions)
            self._results[id(query)] = result
        return self._results[id(query)]

    def rows(self, query: RunQuery) -> list[dict[str, Any]] | None:
        result = self.table(query)
        return None if result is None else result.to_pylist()


def result_table(table_id: str, caption: str, result: pa.Table | None) -> ResultTable:
    """A query's result for the run, without the run id column (the page is about one run)."""
    if result is None:
        return ResultTable(table_id, caption, [], None)
    if "run_id" in result.column_names:
        result = result.drop_columns(["run_id"])
    return ResultTable(table_id, caption, result.column_names, [list(r.values()) for r in result.to_pylist()])


def _svg(fig: Figure, chart_id: str) -> Markup:
    """The figure as inline SVG, text kept as <text> so it is searchable and in the DOM.

    The root gets id chart-<chart_id>; the hash salt keeps the ids inside each chart apart from other charts'.
    """
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": chart_id, "svg.id": f"chart-{chart_id}"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buffer.getvalue()
    return Markup(svg[svg.index("<svg") :])


def _bars(ax: Any, labels: Sequence[str], values: Sequence[int], colour: str) -> None:
    bars = ax.bar(labels, values, color=colour)
    ax.bar_label(bars, padding=2)
    ax.margins(y=0.15)
    ax.spines[["top", "right"]].set_visible(False)


@matplotlib.rc_context({"text.parse_math": False})  # a $ in a purpose's name is text, not a formula that fails
def consent_chart(purposes: Sequence[str], allowed: dict[str, dict[str, int]], not_allowed: dict[str, int]) -> Markup:
    """Profiles per purpose: allowed, stacked by lawful basis, and not allowed."""
    bases = sorted({b for by_basis in allowed.values() for b in by_basis})
    fig = Figure(figsize=(8, 0.6 * len(purposes) + 1.4))
    ax = fig.subplots()
    left = [0] * len(purposes)
    for colour, basis in zip(COLOURS, bases, strict=False):
        widths = [allowed.get(p, {}).get(basis, 0) for p in purposes]
        ax.barh(purposes, widths, left=left, color=colour, label=f"allowed: {basis}")
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.barh(purposes, [not_allowed.get(p, 0) for p in purposes], left=left, color="#d9d9d9", label="not allowed")
    ax.invert_yaxis()
    ax.set_xlabel("profiles")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncols=min(len(bases) + 1, 4), frameon=False)
    return _svg(fig, "consent-coverage")


def profile_changes_chart(events: dict[str, int] | None, gold: dict[str, int] | None) -> Markup:
    """Profile ids created / merged / split / moved into / retired, and golden-profile rows inserted / updated /
    retired; a panel whose table is missing is left out."""
    panels = [
        (title, labels, counts, colour)
        for title, labels, counts, colour in (
            ("profile ids (identity events)", PROFILE_EVENTS, events, COLOURS[0]),
            ("golden profiles (unify)", GOLD_CHANGES, gold, COLOURS[1]),
        )
        if counts is not None
    ]
    fig = Figure(figsize=(4.5 * len(panels), 3.2))
    for ax, (title, labels, counts, colour) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        _bars(ax, labels, [counts.get(label, 0) for label in labels], colour)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("profiles")
    fig.tight_layout()
    return _svg(fig, "profile-changes")


def match_probability_chart(probabilities: Sequence[float], match_threshold: float, cluster_threshold: float) -> Markup:
    """Histogram of pairwise match probabilities, log-scaled (most pairs sit near 1), clustering threshold marked."""
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.subplots()
    low = min([match_threshold, *probabilities])
    counts, _, bars = ax.hist(probabilities, bins=20, range=(low, 1.0), color=COLOURS[0], log=True)
    ax.bar_label(bars, labels=[str(int(c)) if c else "" for c in counts], padding=2, fontsize=8)
    ax.axvline(cluster_threshold, color=COLOURS[3], linestyle="--", label=f"cluster threshold {cluster_threshold}")
    ax.set_xlabel("match probability")
    ax.set_ylabel("pairs (log scale)")
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
    ax.margins(y=0.2)
    ax.legend(frameon=False, loc="upper left")
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, "match-probability")


def cluster_size_chart(sizes: dict[int, int]) -> Markup:
    """Profiles by number of records (cluster size)."""
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.subplots()
    labels = [str(s) for s in sorted(sizes)]
    _bars(ax, labels, [sizes[s] for s in sorted(sizes)], COLOURS[2])
    ax.set_xlabel("records per profile")
    ax.set_ylabel("profiles")
    return _svg(fig, "cluster-size")


def _counts(rows: Iterable[dict[str, Any]] | None, key: str, value: str) -> dict[Any, int]:
    return {r[key]: int(r[value] or 0) for r in rows or []}


def load_quality(run_dir: Path) -> dict[str, Any] | None:
    """The quality gate's results for the run (run_dir/quality.json), or None when the gate wrote none."""
    path = run_dir / QUALITY_FILE
    if not path.is_file():
        return None
    try:
        quality = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IdresError(f"{path}: not valid JSON (line {exc.lineno})") from exc
    except (OSError, UnicodeDecodeError) as exc:  # unreadable, or not UTF-8 text
        raise IdresError(f"{path}: cannot be read ({type(exc).__name__})") from exc
    if not isinstance(quality, dict):
        raise IdresError(f"{path}: expected a JSON object")
    return quality


def gate_verdict(quality: dict[str, Any] | None) -> tuple[str, bool | None]:
    """The gate's verdict in words, and whether it passed (None when there are no results)."""
    if quality is None:
        return "no quality results for this run", None
    passed = bool(quality.get("success"))
    published = bool(quality.get("published"))
    return f"{'passed' if passed else 'FAILED'}, {'published' if published else 'not published'}", passed


def data_docs_link(quality: dict[str, Any] | None, run_dir: Path) -> str | None:
    """The Data Docs page relative to the report, when it exists inside the run folder."""
    relative = (quality or {}).get("data_docs") or "data_docs/index.html"
    target = (run_dir / relative).resolve()
    inside = target.is_relative_to(run_dir.resolve())
    return Path(relative).as_posix() if inside and target.is_file() else None


def run_model_version(cfg: PipelineConfig, results: RunResults) -> tuple[str | None, str]:
    """The model version the run's matches record, else the newest saved model for the current settings;
    and where it came from."""
    recorded = [r["model_version"] for r in results.rows(q.MODEL_VERSIONS) or [] if r["model_version"]]
    if recorded:
        return ", ".join(recorded), "recorded on the run's pairwise matches"
    newest = latest_model(cfg.models, cfg.linkage, cfg.policy)
    if newest is not None:
        return newest.version, "none recorded; the newest saved model for the current settings"
    return None, "no model recorded or saved"


def copy_model_charts(cfg: PipelineConfig, version: str | None, run_dir: Path) -> list[str]:
    """Copy the model's Splink charts (self-contained HTML) beside the report, in place of any copied before;
    their relative paths. Of several versions (`v1, v2`), the newest's: versions begin with their UTC time."""
    target = run_dir / MODEL_FOLDER
    source = cfg.reports / "models" / max(version.split(", ")) if version else None
    if source is None or not source.is_dir():  # those copied before stay: the model's own folder may be gone since
        return sorted(f"{MODEL_FOLDER}/{chart.name}" for chart in target.glob("*.html"))
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    copied = []
    for chart in sorted(source.glob("*.html")):
        shutil.copyfile(chart, target / chart.name)
        copied.append(f"{MODEL_FOLDER}/{chart.name}")
    return copied


def consent_coverage(
    purposes: Sequence[str],
    admitted: int | None,
    records_per_purpose: dict[str, int],
    permissions: list[dict[str, Any]] | None,
) -> ResultTable:
    """Per purpose: admitted records whose permitted purposes include it, and profiles allowed it.

    admitted is None when the admitted table is missing, permissions when profile_permissions is.
    """
    allowed = _counts(permissions, "purpose", "allowed")
    profiles = {p: allowed.get(p, 0) + n for p, n in _counts(permissions, "purpose", "not_allowed").items()}
    rows = [
        [
            p,
            records_per_purpose.get(p, 0) if admitted is not None else "n/a",
            admitted if admitted is not None else "n/a",
            allowed.get(p, 0) if permissions is not None else "n/a",
            profiles.get(p, 0) if permissions is not None else "n/a",
        ]
        for p in purposes
    ]
    return ResultTable(
        "consent-coverage-table",
        "Admitted records and profiles with a permitting lawful basis, per purpose",
        ["purpose", "records permitted", "admitted records", "profiles allowed", "profiles"],
        rows if admitted is not None or permissions is not None else None,
    )


def report_context(cfg: PipelineConfig, run_id: str, run_dir: Path) -> dict[str, Any]:
    """Everything the page shows, computed from the lakehouse, the model folder and quality.json."""
    results = RunResults(cfg.tables, run_id)
    fetch = results.rows
    quality = load_quality(run_dir)
    verdict, passed = gate_verdict(quality)
    policy_rows = fetch(q.POLICY_VERSIONS)
    model_version, model_origin = run_model_version(cfg, results)

    permissions = fetch(q.PERMISSIONS_PER_PURPOSE)
    by_basis = fetch(q.ALLOWED_BY_BASIS) or []
    per_purpose = fetch(q.ADMITTED_PER_PURPOSE)
    # The policy's purposes now, and those of the run's tables: one since retired still shows for its run.
    held = {row["purpose"] for rows in (permissions, by_basis, per_purpose) for row in rows or []}
    purposes = [*cfg.policy.purposes, *sorted(held - set(cfg.policy.purposes))]
    thresholds = (quality or {}).get("thresholds") or {  # recorded by the run's gate; else as configured now
        "match_probability": cfg.linkage.match_probability,
        "cluster_probability": cfg.linkage.cluster_probability,
    }
    allowed: dict[str, dict[str, int]] = {}
    for row in by_basis:
        allowed.setdefault(row["purpose"], {})[row["lawful_basis"] or "none"] = int(row["profiles"])
    admitted = fetch(q.ADMITTED_RECORDS)
    coverage = consent_coverage(
        purposes,
        int(admitted[0]["records"]) if admitted is not None else None,
        _counts(per_purpose, "purpose", "records"),
        permissions,
    )
    profiles_not_allowed = _counts(permissions, "purpose", "not_allowed")

    events = fetch(q.IDENTITY_EVENTS)
    unify_run = fetch(q.UNIFY_RUN)
    probabilities = fetch(q.MATCH_PROBABILITIES)
    sizes = _counts(fetch(q.CLUSTER_SIZES), "records", "profiles")

    def table(table_id: str, caption: str, query: RunQuery) -> ResultTable:
        return result_table(table_id, caption, results.table(query))

    return {
        "run_id": run_id,
        "not_available": NOT_AVAILABLE,
        "generated_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "policy_version": ", ".join(r["policy_version"] for r in policy_rows) if policy_rows else None,
        "configured_policy_version": cfg.policy.version,
        "model_version": model_version,
        "model_origin": model_origin,
        "verdict": verdict,
        "passed": passed,
        "quality": quality,
        "data_docs": data_docs_link(quality, run_dir),
        "candidates": sorted(results.candidates),
        "counts": [
            table("bronze-rows", "Bronze rows per region and source", q.BRONZE_ROWS),
            table(
                "ingest-reconciliation",
                "Ingest reconciliation of this run (read = landed + quarantined)",
                q.INGEST_RECONCILIATION,
            ),
        ],
        "exclusions": [
            table("quarantine-reasons", "Rows held in quarantine, by reason", q.QUARANTINE_REASONS),
            table("consent-decisions", "Consent gate: records admitted and excluded, by reason", q.CONSENT_DECISIONS),
            table(
                "consent-reconciliation",
                "Consent gate reconciliation (silver records = admitted + excluded)",
                q.CONSENT_RECONCILIATION,
            ),
            table("suppressed-attributes", "Attributes suppressed (no permitted purpose)", q.SUPPRESSED_ATTRIBUTES),
            table(
                "consent-event-reconciliation",
                "Consent events of this run per feed (read = landed + quarantined)",
                q.CONSENT_EVENT_RECONCILIATION,
            ),
            table("consent-quarantine", "Consent events held in quarantine, by reason", q.CONSENT_QUARANTINE),
            table(
                "consent-records-not-held",
                "Consent events for records no source has delivered (they decide nothing until it does), per feed",
                q.CONSENT_FOR_RECORDS_NOT_HELD,
            ),
        ],
        "coverage": [
            coverage,
            table("allowed-by-basis", "Profiles allowed, by lawful basis", q.ALLOWED_BY_BASIS),
        ],
        "coverage_chart": consent_chart(purposes, allowed, profiles_not_allowed) if permissions else None,
        "changes": [
            table("identity-events", "Profile ids changed by this run", q.IDENTITY_EVENTS),
            table("unify-run", "Golden profiles published by this run", q.UNIFY_RUN),
        ],
        "changes_chart": profile_changes_chart(
            _counts(events, "event_type", "profiles") if events is not None else None,
            {c: int(unify_run[0][c]) for c in GOLD_CHANGES} if unify_run else None,
        )
        if events is not None or unify_run
        else None,
        "resolution": table("resolution-totals", "Pairwise matches, records and profiles", q.RESOLUTION_TOTALS),
        "match_chart": match_probability_chart(
            [r["match_probability"] for r in probabilities],
            thresholds["match_probability"],
            thresholds["cluster_probability"],
        )
        if probabilities
        else None,
        "cluster_chart": cluster_size_chart(sizes) if sizes else None,
        "max_cluster_size": max(sizes) if sizes else None,
        "model_charts": copy_model_charts(cfg, model_version, run_dir),
    }


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("jobs", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def write_auditor_report(cfg: PipelineConfig, run_id: str, run_dir: Path) -> Path:
    """Write run_dir/index.html, the run's auditor report, and the model charts it frames; return its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    page = _environment().get_template("auditor_report.html.j2").render(**report_context(cfg, run_id, run_dir))
    return write_whole(run_dir / REPORT_FILE, page)  # a reader never sees half a page


def latest_auditor_report(cfg: PipelineConfig) -> Path | None:
    """The report of the run the quality gate validated last, or None. By its results (quality.json), which only
    the gate writes: a report written again later for an earlier run (python -m jobs.report) is not the last."""
    runs = cfg.reports / "runs"
    results = [p for p in runs.glob(f"*/{QUALITY_FILE}") if (p.parent / REPORT_FILE).is_file()] if runs.is_dir() else []
    return max(results, key=lambda p: p.stat().st_mtime).parent / REPORT_FILE if results else None


def recorded_run(cfg: PipelineConfig, run_id: str, run_dir: Path) -> bool:
    """Whether the run's audit rows (which an erasure's purge of the tables' logs keeps), some table's log or its
    report folder's quality results record run_id."""
    t = cfg.tables
    audited = any(
        delta_io.table_exists(path) and delta_io.rows_where(path, "run_id", run_id, ["run_id"])
        for path in (t.ingest_runs, t.consent_runs, t.unify_runs)
    )
    logged = audited or any(
        c.get("run_id") == run_id
        for path in t.all().values()
        if delta_io.table_exists(path)
        for c in delta_io.history(path)
    )
    return logged or names_run(run_dir / QUALITY_FILE, run_id)


def main(argv: Sequence[str] | None = None) -> Path:
    parser = job_arg_parser("Write a run's auditor report (HTML) from the lakehouse; no Spark needed.")
    args = parser.parse_args(argv)
    if not args.run_id:
        parser.error("--run-id is required")
    try:
        cfg = load_config(args.conf)
        complete_for_readers(cfg, "report")
        run_dir = cfg.run_report_dir(args.run_id)
        if not recorded_run(cfg, args.run_id, run_dir):
            raise IdresError(
                f"no table's log and no quality results record run {args.run_id!r}: give a run id as the tables "
                "record it (make query SQL='SELECT DISTINCT run_id, ingested_at FROM ingest_runs'), not a report "
                "folder's name"
            )
        path = write_auditor_report(cfg, args.run_id, run_dir)
    except IdresError as err:  # a config with problems, a run id that names no folder, an unreadable quality.json
        parser.exit(2, f"report: {err}\n")
    print(f"Auditor report: {path.as_uri()}")
    return path


if __name__ == "__main__":
    main()
