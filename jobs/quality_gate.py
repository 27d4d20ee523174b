"""Quality gate: validate the staged gold candidates with Great Expectations, then publish them or refuse.

Write-audit-publish. Resolve stages its pairs, record -> profile ids, registry and identity events, and unify
the gold candidates, under `staging/`; this job validates them, together with the upstream tables of the run
(expectations/: the suites of each table, or of a group of related tables), and only when every expectation
holds merges them all into the published tables (jobs.publication: each commit made once per publication of
the run, the publication journalled so one interrupted between tables is completed by the next job; a run
cleared and run again publishes its new candidates). When an expectation fails, nothing is published: every
published table stays at its previous Delta version, the candidates stay staged for inspection, the run's
report is still written, and the job fails naming the failed expectations.

Per run, under `reports/runs/<run id>/`: quality.json (the results: counts, never values), the GX Data
Docs (data_docs/index.html) and the auditor report (index.html).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import expectations
import jobs
from expectations import (
    SAFE_RESULT_FORMAT,
    QualityInputs,
    TableCheck,
    bronze,
    consent_ledger,
    gold_columns,
    identity_events,
    pairwise_matches,
    profile_lineage,
    profile_registry,
    profile_sources,
    profiles,
    record_profiles,
    silver,
)
from jobs import delta_io
from jobs.config import GOLD_TABLES, PUBLISHED_TABLES, PipelineConfig
from jobs.errors import ExpectationNotComputedError, IdresError
from jobs.files import write_whole
from jobs.profile_ids import IDENTITY_EVENTS_SCHEMA, REGISTRY_SCHEMA
from jobs.publication import (
    JOB,
    PublishResult,
    completed_publication,
    finish_interrupted_publication,
    next_publication,
    publish,
    require_whole_resolution,
)
from jobs.report import REPORT_FILE, write_auditor_report
from jobs.runner import run_job
from jobs.spark_session import run_at_once, size_stage_to_input

log = logging.getLogger("idres.quality_gate")

# The suites of what resolve and unify stage: all an erasure validates before publishing its re-resolution.
GOLD_SUITE_MODULES = (
    pairwise_matches,
    record_profiles,
    profile_registry,
    identity_events,
    profiles,
    profile_sources,
    profile_lineage,
    gold_columns,
)
SUITE_MODULES = (bronze, silver, consent_ledger, *GOLD_SUITE_MODULES)
SUITES_AT_ONCE = 3  # suites validated at once (see validate)


# The upstream tables a gate run reads, and the stage that writes each.
UPSTREAM: dict[str, str] = {
    "bronze": "ingest",
    "ingest_runs": "ingest",
    "silver": "standardize",
    "consent_ledger": "consent_gate",
    "effective_consent": "consent_gate",
    "consent_audit": "consent_gate",
    "consent_runs": "consent_gate",
    "admitted": "consent_gate",
}
# Resolve's tables, read as staged, or as published when none is (unify ran again on the published resolution,
# whose tables the publication then skips). Its identity events are read as staged only (the published ones are
# every run's), so no event is this run's when it staged none.
RESOLVED_INPUTS = ("pairwise_matches", "record_profiles", "profile_registry")


class QualityGateError(IdresError):
    """The staged gold failed expectations and was not published."""


@dataclass
class QualityOutcome:
    """What the gate found: per suite, per expectation, success and counts (no values)."""

    run_id: str
    success: bool
    suites: list[dict[str, Any]]
    published: bool = False
    data_docs: str | None = None
    inputs: str | None = None  # inputs_fingerprint of what was validated
    thresholds: dict[str, float] | None = None  # the match and cluster probabilities the run resolved with
    publication: int | None = None  # the run's publication number its passed candidates were to be published as

    @property
    def failed(self) -> list[str]:
        return [
            f"{s['suite']}: {e['expectation']}({e['column']}): {e['description']}"
            for s in self.suites
            for e in s["expectations"]
            if not e["success"]
        ]


@dataclass
class GateResult:
    run_id: str
    outcome: QualityOutcome
    report_dir: Path
    publish: PublishResult | None = None


def read_inputs(spark: SparkSession, cfg: PipelineConfig, upstream: Sequence[str] = tuple(UPSTREAM)) -> QualityInputs:
    """The run's upstream tables as published (those named in upstream; the others are None), resolve's tables
    (see RESOLVED_INPUTS) and unify's candidates as staged, and the profile sources and registry as last published
    (what the candidates are checked against)."""
    t = cfg.tables
    missing = [f"{name} (run {UPSTREAM[name]})" for name in upstream if not delta_io.table_exists(getattr(t, name))]
    missing += [
        f"{name} (run resolve)"
        for name in RESOLVED_INPUTS
        if not delta_io.table_exists(delta_io.staged_or_published(t, name))
    ]
    missing += [f"staged {name} (run unify)" for name in GOLD_TABLES if not delta_io.table_exists(t.staged(name))]
    if missing:
        raise IdresError("quality gate: missing tables: " + ", ".join(missing))
    tables = {name: delta_io.read_delta(spark, getattr(t, name)) if name in upstream else None for name in UPSTREAM}
    resolved = {name: delta_io.read_delta(spark, delta_io.staged_or_published(t, name)) for name in RESOLVED_INPUTS}
    events = delta_io.read_delta_or_empty(spark, t.staged("identity_events"), IDENTITY_EVENTS_SCHEMA)
    staged = {name: delta_io.read_delta(spark, t.staged(name)) for name in GOLD_TABLES}
    previous = delta_io.read_delta_or_empty(
        spark, t.profile_sources, "profile_id string, source_system string, source_record_id string"
    )
    quarantine = delta_io.read_delta_or_empty(
        spark,
        t.quarantine,
        "source_system string, source_record_id string, reason string, run_id string, quarantined_at timestamp",
    )
    return QualityInputs(
        cfg=cfg,
        **tables,
        **resolved,
        identity_events=events,
        **staged,
        previous_profile_sources=previous,
        previous_profile_registry=delta_io.read_delta_or_empty(spark, t.profile_registry, REGISTRY_SCHEMA),
        quarantine=quarantine,
    )


def gate_checks(spark: SparkSession, cfg: PipelineConfig) -> list[TableCheck]:
    """Every suite's checks on this run's tables (expectations/, SUITE_MODULES)."""
    inputs = read_inputs(spark, cfg)
    return [check for module in SUITE_MODULES for check in module.checks(inputs)]


def gold_checks(spark: SparkSession, cfg: PipelineConfig) -> list[TableCheck]:
    """The checks of the staged candidates alone (GOLD_SUITE_MODULES), which read the admitted records, the
    consent ledger and effective consent besides: what an erasure validates before it publishes its
    re-resolution, as it changes no upstream table but by deleting the subject's rows."""
    inputs = read_inputs(spark, cfg, upstream=("admitted", "consent_ledger", "effective_consent"))
    return [check for module in GOLD_SUITE_MODULES for check in module.checks(inputs)]


def _raised_exception(result: Any) -> bool:
    """Whether GX caught an exception computing the result (one for the expectation, or one per metric)."""
    info = result.exception_info or {}
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    return any(isinstance(metric, dict) and metric.get("raised_exception") for metric in info.values())


def _expectation_result(result: Any) -> dict[str, Any]:
    config = result.expectation_config
    kwargs = config.kwargs
    column = (
        kwargs.get("column")
        or ",".join(kwargs.get("column_list") or [])
        or (f"{kwargs['column_A']}={kwargs['column_B']}" if "column_A" in kwargs else "table")
    )
    counts = result.result or {}
    elements, unexpected = counts.get("element_count"), counts.get("unexpected_count")
    return {
        "expectation": config.type,
        "column": column,
        "description": config.description or "",
        "success": bool(result.success),
        "element_count": elements,
        # GX on Spark reports no unexpected count on an empty frame where pandas reports 0: the same result.
        "unexpected_count": 0 if unexpected is None and elements == 0 else unexpected,
        "observed_value": counts.get("observed_value")
        if isinstance(counts.get("observed_value"), int | float)
        else None,
    }


def _named_columns(kwargs: dict[str, Any]) -> list[str]:
    """The columns an expectation's arguments name."""
    named = [kwargs.get(k) for k in ("column", "column_A", "column_B")] + list(kwargs.get("column_list") or [])
    return [c for c in named if c]


def checked_frame(check: TableCheck) -> DataFrame:
    """The check's frame cut to the columns its expectations read, so GX computes, caches and (in pandas)
    collects only those, and never holds a personal column it does not check. When an expectation inspects the
    table's columns, the others stay in place as typed nulls; the frame is whole when one filters rows by a
    condition."""
    columns: list[str] = []
    inspects_columns = False
    for expectation in check.expectations:
        kwargs = expectation.configuration.kwargs
        if kwargs.get("row_condition"):
            return check.frame
        inspects_columns |= "table_column" in expectation.expectation_type
        columns += [c for c in _named_columns(kwargs) if c not in columns]
    if inspects_columns:
        return check.frame.select(
            *[
                F.col(f.name) if f.name in columns else F.lit(None).cast(f.dataType).alias(f.name)
                for f in check.frame.schema
            ]
        )
    # A named column the table lacks is left out: GX reports its expectation as failed (validate).
    present = [c for c in columns if c in check.frame.columns]
    return check.frame.select(*present) if present else check.frame


def gx_batch(frame: DataFrame, pandas_max_rows: int) -> tuple[str, Any]:
    """The engine GX validates a persisted checked frame on, and the batch: the frame collected into
    pandas (through Arrow) when it holds at most pandas_max_rows rows, else the Spark frame itself.

    GX on Spark computes its metrics in several Spark jobs per expectation, a fixed cost that dominates
    the gate on small runs; pandas does the same checks in memory. The count fills the frame's cache,
    which either engine then reads.
    """
    if pandas_max_rows > 0 and frame.count() <= pandas_max_rows:
        return "pandas", frame.toArrow().to_pandas()
    return "spark", frame


def validate(
    checks: Sequence[TableCheck],
    run_id: str,
    docs_dir: Path | None = None,
    pandas_max_rows: int = 0,
    suites_at_once: int = SUITES_AT_ONCE,
) -> QualityOutcome:
    """Run every check's suite on its frame in one ephemeral GX context; build Data Docs into docs_dir.

    Each frame is cut to the columns its expectations read (checked_frame); frames of at most pandas_max_rows
    rows are validated in pandas (see gx_batch), the others on Spark. Up to suites_at_once suites run at once:
    GX builds its metrics in the driver between Spark jobs, which alone leave cores idle.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        context.add_data_docs_site(
            "run",
            {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    adding = threading.Lock()  # GX's stores are plain dicts, added to from the worker threads

    def validate_check(check: TableCheck) -> dict[str, Any]:
        frame = checked_frame(check).persist()
        present = set(frame.columns)
        try:
            engine, data = gx_batch(frame, pandas_max_rows)
            with adding:
                # A data source per suite: each holds its own execution engine, whose loaded batches are not
                # meant to be shared between validations running at once.
                sources = context.data_sources
                source = (sources.add_spark if engine == "spark" else sources.add_pandas)(f"idres_{check.suite}")
                batch = source.add_dataframe_asset(check.suite).add_batch_definition_whole_dataframe(check.suite)
                suite = context.suites.add(gx.ExpectationSuite(name=check.suite, expectations=list(check.expectations)))
                definition = context.validation_definitions.add(
                    gx.ValidationDefinition(name=check.suite, data=batch, suite=suite)
                )
                checkpoint = context.checkpoints.add(
                    gx.Checkpoint(
                        name=check.suite, validation_definitions=[definition], result_format=SAFE_RESULT_FORMAT
                    )
                )
            result = checkpoint.run(batch_parameters={"dataframe": data})
        finally:
            frame.unpersist()
        (validation,) = result.run_results.values()
        # A column the table lacks is a finding (a failed expectation), not an engine that failed.
        computable = [r for r in validation.results if set(_named_columns(r.expectation_config.kwargs)) <= present]
        if raised := [r for r in computable if _raised_exception(r)]:
            names = [f"{e['expectation']}({e['column']})" for e in map(_expectation_result, raised)]
            raise ExpectationNotComputedError(check.suite, names, [str(r.exception_info) for r in raised])
        log.info("quality gate: %s %s (GX on %s)", check.suite, "passed" if validation.success else "FAILED", engine)
        return {
            "suite": check.suite,
            "table": check.table,
            "engine": engine,
            "success": bool(validation.success),
            "expectations": [_expectation_result(r) for r in validation.results],
        }

    suites = run_at_once(SparkSession.active(), [partial(validate_check, check) for check in checks], suites_at_once)
    data_docs = None
    if docs_dir is not None:
        context.build_data_docs(site_names=["run"])
        data_docs = "data_docs/index.html"
    return QualityOutcome(run_id=run_id, success=all(s["success"] for s in suites), suites=suites, data_docs=data_docs)


def _already_published(cfg: PipelineConfig, run_id: str) -> bool:
    """Whether run_id published and staged nothing since: a publication drops the staging, so no staged table
    holds a commit of run_id (the staging is gone, or another run's, such as a CLI run's refused candidates left
    before a retry of run_id's gate). A run cleared and staged again under its id publishes again."""
    t = cfg.tables
    if not delta_io.committed_in_run(t.unify_runs, JOB, run_id):
        return False
    staged = [t.staged(name) for name in PUBLISHED_TABLES if delta_io.table_exists(t.staged(name))]
    return not any(commit.get("run_id") == run_id for path in staged for commit in delta_io.history(path))


def _stable(value: Any) -> Any:
    return sorted(map(str, value)) if isinstance(value, set | frozenset) else str(value)


def inputs_fingerprint(cfg: PipelineConfig) -> str:
    """SHA-256 of what a gate run's outcome depends on: the version of every table and staged candidate, the
    configuration, the day (the silver suite checks dates of birth against it), the code of the suites and of
    the jobs modules they import, and the versions of GX and Spark. A refused run retried with the same
    fingerprint would be refused again (GX on the same frames finds the same)."""
    t = cfg.tables
    tables = {**t.all(), **{f"staged/{name}": t.staged(name) for name in PUBLISHED_TABLES}}
    inputs = {
        "tables": {n: delta_io.table_version(p) for n, p in sorted(tables.items())},
        "configuration": asdict(cfg),
        "today": date.today().isoformat(),
        "packages": {name: metadata.version(name) for name in ("great_expectations", "pyspark")},
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=_stable).encode())
    for package in (expectations, jobs):
        for path in sorted(Path(package.__file__).parent.glob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def read_outcome(report_dir: Path) -> QualityOutcome | None:
    """The run's recorded quality.json, or None when there is none (or none that reads whole)."""
    recorded = report_dir / "quality.json"
    try:
        body = json.loads(recorded.read_text(encoding="utf-8"))
        return QualityOutcome(**{f.name: body[f.name] for f in fields(QualityOutcome) if f.name in body})
    except (OSError, ValueError, TypeError):
        return None


def refusal(cfg: PipelineConfig, outcome: QualityOutcome, report_dir: Path, again: bool = False) -> QualityGateError:
    """The error of a refused run, naming its failed expectations (and, when `again`, that a retry found the inputs
    unchanged since and did not validate them a second time)."""
    versions = {name: delta_io.table_version(getattr(cfg.tables, name)) for name in PUBLISHED_TABLES}
    unchanged = "refused again, not validated: tables, configuration and suites unchanged since; " if again else ""
    return QualityGateError(
        f"quality gate failed; {unchanged}nothing published (tables stay at versions {versions}); "
        f"{len(outcome.failed)} failed expectation(s): " + "; ".join(outcome.failed) + f"; report: {report_dir}"
    )


def write_outcome(outcome: QualityOutcome, report_dir: Path) -> Path:
    """quality.json of the run (results with counts only)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    body = {**asdict(outcome), "failed": outcome.failed}
    path = report_dir / "quality.json"
    return write_whole(path, json.dumps(body, indent=2, default=str) + "\n")  # a killed write leaves the last one


def staged_by_other_runs(cfg: PipelineConfig, run_id: str) -> list[str]:
    """The staged tables whose last commit is not run_id's: candidates of two runs must not be published as one
    (run A's, refused and left staged, under run B's unify that died between its tables)."""
    t = cfg.tables
    staged = [name for name in PUBLISHED_TABLES if delta_io.table_exists(t.staged(name))]
    return [name for name in staged if delta_io.history(t.staged(name))[0].get("run_id") != run_id]


def _published_result(cfg: PipelineConfig, run_id: str, report_dir: Path) -> GateResult:
    """The result of a run already published: its recorded outcome, marked published when an earlier attempt
    died in the publication (completed by this one), and its auditor report written again.

    The report is the gate's last step, after quality.json is marked published: an attempt that dies in it
    (or is killed) leaves no report, or one of an earlier publication of the run, so the retry writes it.
    """
    outcome = read_outcome(report_dir) or QualityOutcome(run_id, True, [], published=True)
    if not outcome.success:
        # This attempt's run refused its candidates, which are no longer staged (an erasure drops the staging):
        # the publication on record is an earlier one of the run, and nothing of this one was published.
        raise QualityGateError(
            f"quality gate: run {run_id}'s last candidates failed {len(outcome.failed)} expectation(s) and are no "
            f"longer staged, so nothing of them was published; rerun resolve and unify for this run. Report: "
            f"{report_dir}"
        )
    by_this_retry = not outcome.published
    done = completed_publication(cfg, run_id)
    if by_this_retry and outcome.publication is not None and done < outcome.publication:
        # The attempt died before its publication began, and the candidates left the staging since (an erasure
        # dropped it, or another run staged over it): the publication on record is an earlier one of the run.
        raise QualityGateError(
            f"quality gate: run {run_id}'s last candidates passed, but they are no longer staged and were not "
            f"published (the run's publication {outcome.publication} never began); rerun resolve and unify for this "
            f"run. Report: {report_dir}"
        )
    if by_this_retry:
        outcome.published = True
        write_outcome(outcome, report_dir)
    log.info(
        "quality gate: run %s %s; auditor report: %s",
        run_id,
        "published by this retry" if by_this_retry else "already published",
        write_auditor_report(cfg, run_id, report_dir),
    )
    return GateResult(run_id, outcome, report_dir)


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> GateResult:
    """Validate the staged gold and the run's tables; publish when all expectations hold, else fail."""
    report_dir = cfg.run_report_dir(run_id)
    # This run's own too: its candidates passed every suite before its publication began, and validating them
    # again against upstream tables changed since would only leave the published tables half-updated.
    finish_interrupted_publication(cfg)
    if _already_published(cfg, run_id):
        return _published_result(cfg, run_id, report_dir)
    require_whole_resolution(cfg)
    foreign = staged_by_other_runs(cfg, run_id)
    if foreign:
        raise IdresError(
            f"quality gate: the staged {', '.join(foreign)} are not run {run_id}'s (another run's resolve or unify "
            "staged them last); rerun resolve and unify for this run before its gate"
        )
    fingerprint = inputs_fingerprint(cfg)
    recorded = read_outcome(report_dir)
    if recorded is not None and not recorded.success and recorded.inputs == fingerprint:
        log.info("quality gate: run %s was refused on these very inputs; not validated again", run_id)
        if not (report_dir / REPORT_FILE).is_file():  # the refused attempt died before its auditor report
            write_auditor_report(cfg, run_id, report_dir)
        raise refusal(cfg, recorded, report_dir, again=True)  # an Airflow retry of a refusal costs no second gate
    checks = gate_checks(spark, cfg)  # names any missing table before the admitted count reads one
    size_stage_to_input(spark, cfg.spark, delta_io.row_count(cfg.tables.admitted))
    outcome = validate(
        checks,
        run_id,
        report_dir / "data_docs",
        cfg.quality.pandas_max_rows,
    )
    outcome.inputs = fingerprint
    outcome.thresholds = {
        "match_probability": cfg.linkage.match_probability,
        "cluster_probability": cfg.linkage.cluster_probability,
    }
    result = GateResult(run_id=run_id, outcome=outcome, report_dir=report_dir)
    if outcome.success:
        outcome.publication = next_publication(cfg, run_id)
        write_outcome(outcome, report_dir)  # what a retry that finds the publication interrupted reports
        result.publish = publish(cfg, run_id, outcome.publication)
        outcome.published = True
    write_outcome(outcome, report_dir)
    log.info("auditor report: %s", write_auditor_report(cfg, run_id, report_dir))
    if not outcome.success:
        raise refusal(cfg, outcome, report_dir)
    return result


def main(argv: Sequence[str] | None = None) -> GateResult:
    return run_job("quality_gate", run, argv)


if __name__ == "__main__":
    from jobs.quality_gate import main as job_main

    job_main()
