"""Publish: merge a run's staged tables (resolve's and unify's candidates) into the published ones.

Delta commits one table at a time, so a publication that dies between tables (a killed driver, a lost disk)
leaves some tables at the new run and some at the previous one. Each table's commit is made once per
publication (a Delta app transaction `idres:publish:<run id>` whose version numbers the run's publications:
a run cleared and published again with new candidates is its second), and the publication is journalled:
`staging/_publishing.json` names the run and its publication number from its first commit until the staging
is dropped. Any job that reads or replaces published or staged tables first calls
finish_interrupted_publication, which completes that publication under the same number (roll forward: the
candidates had passed the quality gate), so no job ever works on a half-published lakehouse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from jobs import delta_io
from jobs.config import PUBLISHED_TABLES, RESOLVED_TABLES, PipelineConfig
from jobs.errors import ColumnTypeChangeError, IdresError
from jobs.files import write_whole
from jobs.runner import lakehouse_lock

log = logging.getLogger("idres.publication")

JOB = "publish"
JOURNAL = "_publishing.json"
# Under the lakehouse: each run's last completed publication number. The audit row records it only when the row
# changes, and a publication again of the same candidates changes nothing; this outlives the staging.
PUBLICATIONS_DIR = "_publications"


@dataclass(frozen=True)
class Publication:
    """How a staged table merges into its published one: on its keys; with `replace`, rows that changed are
    rewritten and rows no longer staged deleted (the staged table is the whole new state); without, staged
    rows are added (the registry also updates changed rows, keeping every id ever issued)."""

    keys: tuple[str, ...]
    replace: bool = True
    update_changed: bool = True


PUBLICATIONS: dict[str, Publication] = {
    "pairwise_matches": Publication(("record_id_l", "record_id_r")),
    "record_profiles": Publication(("record_id",)),
    "profile_registry": Publication(("profile_id",), replace=False),
    "identity_events": Publication(("event_id",), replace=False, update_changed=False),
    "profiles": Publication(("profile_id",)),
    "profile_sources": Publication(("record_id",)),
    "profile_lineage": Publication(("profile_id", "column")),
    "profile_permissions": Publication(("profile_id", "purpose")),
}

UNIFY_RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("profiles", pa.int64()),
        ("inserted", pa.int64()),
        ("updated", pa.int64()),
        ("retired", pa.int64()),
        ("lineage_rows", pa.int64()),
        ("unified_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass
class PublishResult:
    """What a publication changed in the profiles, and the tables this run had published before (a resume, or
    a publication again of candidates it had published)."""

    run_id: str
    profiles: int = 0
    inserted: int = 0
    updated: int = 0
    retired: int = 0
    lineage_rows: int = 0
    skipped_tables: list[str] = field(default_factory=list)


def publish_table(cfg: PipelineConfig, name: str, run_id: str, number: int = 1) -> dict[str, int] | None:
    """Merge one staged table into its published table (PUBLICATIONS), once per publication (run id and
    number); returns the merge metrics, or None when this publication already committed it. A table replaced
    whole takes the staged table's schema: a column the candidates no longer have leaves it."""
    how = PUBLICATIONS[name]
    return delta_io.merge_delta(
        delta_io.DeltaSource(cfg.tables.staged(name)),
        getattr(cfg.tables, name),
        keys=how.keys,
        run_id=run_id,
        job=JOB,
        update_changed=how.update_changed,
        delete_missing=how.replace,
        once_per_run=True,
        transaction_version=number,
        schema_follows_source=how.replace,
    )


def _changed(metrics: dict[str, int]) -> bool:
    return any(metrics.get(f"num_target_rows_{what}", 0) for what in ("inserted", "updated", "deleted"))


def next_publication(cfg: PipelineConfig, run_id: str) -> int:
    """The number of run_id's next publication: one more than the highest its commits to the published tables
    and the publish audit record, or its last completed publication, give (1 for a run that never published)."""
    t = cfg.tables
    paths = [getattr(t, name) for name in PUBLISHED_TABLES] + [t.unify_runs]
    committed = max((delta_io.run_transaction_version(p, JOB, run_id) or 0 for p in paths), default=0)
    return 1 + max(committed, completed_publication(cfg, run_id))


def _publication_record(cfg: PipelineConfig, run_id: str) -> Path:
    return cfg.lakehouse / PUBLICATIONS_DIR / f"{hashlib.sha256(run_id.encode('utf-8')).hexdigest()[:20]}.json"


def completed_publication(cfg: PipelineConfig, run_id: str) -> int:
    """The number of run_id's last publication that completed (0: none): by the publish audit record's commits, or
    by the record publish() leaves when it ends, which a publication that changed nothing leaves too."""
    audited = delta_io.run_transaction_version(cfg.tables.unify_runs, JOB, run_id) or 0
    try:
        recorded = int(json.loads(_publication_record(cfg, run_id).read_text(encoding="utf-8"))["publication"])
    except (OSError, ValueError, KeyError, TypeError):
        recorded = 0
    return max(audited, recorded)


def publish(cfg: PipelineConfig, run_id: str, number: int | None = None) -> PublishResult:
    """Merge the staged tables (resolve's and unify's) into the published ones as run_id's publication number
    (a new one unless given: finish_interrupted_publication resumes the journalled one), then drop the staging.

    A table this publication already committed is skipped, and so is one its merge leaves as this run
    published it before; both report the run's commit to it, so a resumed or repeated publication reports
    what an uninterrupted one did, and commits nothing where nothing changes.
    """
    t = cfg.tables
    number = next_publication(cfg, run_id) if number is None else number
    result = PublishResult(run_id=run_id)
    metrics: dict[str, dict[str, int]] = {}
    staged = [name for name in PUBLISHED_TABLES if name not in RESOLVED_TABLES or delta_io.table_exists(t.staged(name))]
    _check_column_types(cfg, staged)
    _journal_publication(cfg, run_id, number)
    for name in staged:  # a resolved table not staged: unify ran on the published resolution (a rerun)
        log.info("publication %d of run %s: %s", number, run_id, name)  # a failure's log names no table
        published = getattr(t, name)
        m = publish_table(cfg, name, run_id, number)
        if m is None or (not _changed(m) and delta_io.committed_in_run(published, JOB, run_id)):
            result.skipped_tables.append(name)
            m = delta_io.run_commit_metrics(published, JOB, run_id)
        metrics[name] = m
    result.profiles = delta_io.row_count(t.profiles)
    # A skipped table's counts come from the run's commit in its log; after a purge (an erasure) only the run's
    # audit row still holds them.
    profiles = metrics["profiles"] or _audited_counts(cfg, run_id)
    result.inserted = int(profiles.get("num_target_rows_inserted", 0))
    result.updated = int(profiles.get("num_target_rows_updated", 0))
    result.retired = int(profiles.get("num_target_rows_deleted", 0))
    result.lineage_rows = delta_io.row_count(t.profile_lineage)
    at = delta_io.run_time(datetime.now(UTC), [(t.unify_runs, "unified_at")])
    audit = pa.Table.from_pylist(
        [
            {
                "run_id": run_id,
                "profiles": result.profiles,
                "inserted": result.inserted,
                "updated": result.updated,
                "retired": result.retired,
                "lineage_rows": result.lineage_rows,
                "unified_at": at,
            }
        ],
        schema=UNIFY_RUNS_SCHEMA,
    )
    delta_io.merge_delta(
        audit,
        t.unify_runs,
        keys=("run_id",),
        run_id=run_id,
        job=JOB,
        update_changed=True,  # a publication again with new candidates replaces the run's row
        ignore_changes_in=("unified_at",),
        once_per_run=True,
        transaction_version=number,
    )
    record = _publication_record(cfg, run_id)
    record.parent.mkdir(exist_ok=True)
    write_whole(record, json.dumps({"run_id": run_id, "publication": number}) + "\n")
    drop_staging(cfg)
    log.info(
        "published: %d profiles (inserted %d, updated %d, retired %d), %d lineage rows%s",
        result.profiles,
        result.inserted,
        result.updated,
        result.retired,
        result.lineage_rows,
        f"; already published by this run: {', '.join(result.skipped_tables)}" if result.skipped_tables else "",
    )
    return result


def _audited_counts(cfg: PipelineConfig, run_id: str) -> dict[str, int]:
    """The profile counts (as merge metrics) of run_id's row in the publish audit (unify_runs); {} for none."""
    if not delta_io.table_exists(cfg.tables.unify_runs):
        return {}
    rows = delta_io.rows_where(cfg.tables.unify_runs, "run_id", run_id)
    if not rows:
        return {}
    (row,) = rows
    return {
        "num_target_rows_inserted": row["inserted"],
        "num_target_rows_updated": row["updated"],
        "num_target_rows_deleted": row["retired"],
    }


def require_whole_resolution(cfg: PipelineConfig) -> None:
    """Fail when resolve staged some of its tables but not all (it stages all four, so it died between them):
    whatever read the rest as published would mix two resolutions, e.g. records assigned to profile ids the
    published registry never issued."""
    staged = [name for name in RESOLVED_TABLES if delta_io.table_exists(cfg.tables.staged(name))]
    if staged and len(staged) < len(RESOLVED_TABLES):
        missing = [name for name in RESOLVED_TABLES if name not in staged]
        raise IdresError(
            f"resolve did not finish: it staged {', '.join(staged)} but not {', '.join(missing)}; "
            "rerun resolve for this run"
        )


def _check_column_types(cfg: PipelineConfig, names: list[str]) -> None:
    """Fail before the first commit when a staged table changes a column type of a published table it adds to
    (one replaced whole takes the staged types), or the audit row one of unify_runs: a publication that stopped
    there would leave the published tables half-updated, every retry stopping at the same table."""
    sources = {
        getattr(cfg.tables, name): delta_io.DeltaSource(cfg.tables.staged(name))
        for name in names
        if not PUBLICATIONS[name].replace
    }
    sources[cfg.tables.unify_runs] = UNIFY_RUNS_SCHEMA.empty_table()  # the publication's last commit
    for published, source in sources.items():
        if retyped := delta_io.retyped_columns(source, published):
            raise ColumnTypeChangeError(str(published), retyped)


def drop_staging(cfg: PipelineConfig) -> None:
    """Remove the staging folder: first renamed aside (atomic), so a job killed while deleting it never leaves a
    staging that still looks whole (tables missing files, the journal gone); then deleted, with any folder an
    earlier kill left aside."""
    staging = cfg.tables.staging
    if staging.exists():
        os.replace(staging, staging.with_name(f".{staging.name}-dropped-{uuid.uuid4().hex}"))
    for dropped in staging.parent.glob(f".{staging.name}-dropped-*"):
        shutil.rmtree(dropped, ignore_errors=True)


def _journal_publication(cfg: PipelineConfig, run_id: str, number: int) -> None:
    """Record, before the first table's commit, that run_id's candidates are being published as its
    publication number."""
    journal = cfg.tables.staging / JOURNAL
    write_whole(journal, json.dumps({"run_id": run_id, "publication": number}) + "\n")


def publishing(cfg: PipelineConfig) -> bool:
    """Whether a publication is journalled: under way, or interrupted between its tables."""
    return (cfg.tables.staging / JOURNAL).is_file()


def complete_for_readers(cfg: PipelineConfig, reader: str) -> None:
    """For a reader outside the jobs (the query command, the run summary, a report written by hand): while a
    publication is journalled, wait for the lakehouse lock, so for the job publishing to end, and complete a
    publication that was interrupted (as the next job would), so the reader never sees half of one. A job holds
    the lock already and calls finish_interrupted_publication itself."""
    if publishing(cfg):
        with lakehouse_lock(cfg, reader):
            finish_interrupted_publication(cfg)


def finish_interrupted_publication(cfg: PipelineConfig) -> PublishResult | None:
    """Complete a publication that died between its tables, if the journal names one; returns its result."""
    if not publishing(cfg):
        return None
    journal = cfg.tables.staging / JOURNAL
    entry = json.loads(journal.read_text(encoding="utf-8"))
    run_id, number = entry["run_id"], int(entry.get("publication", 1))  # a journal without a number: the first
    log.warning("publication %d of run %s was interrupted between tables; completing it first", number, run_id)
    return publish(cfg, run_id, number)
