"""SQL that describes a pipeline run, shared by the `make run` summary and the auditor report.

Every query returns counts and codes (regions, sources, reasons, purposes, lawful bases), never a
person's values or ids. A query about one run carries `{run}` in its SQL: the summary fills it with
each table's latest run, the auditor report with the run it describes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from jobs import delta_io
from jobs.config import TablePaths


@dataclass(frozen=True)
class RunQuery:
    """SQL over Delta tables named by alias; `run` is (alias, time column) when it looks at one run."""

    tables: Mapping[str, str]  # SQL alias -> TablePaths attribute
    sql: str
    run: tuple[str, str] | None = None

    def paths(self, tables: TablePaths, instead: Mapping[str, Path] | None = None) -> dict[str, Path]:
        """Each alias's table; `instead` maps a table name to the path read in its place (a staged candidate)."""
        instead = instead or {}
        return {alias: instead.get(attr) or getattr(tables, attr) for alias, attr in self.tables.items()}

    def available(self, tables: TablePaths, instead: Mapping[str, Path] | None = None) -> bool:
        """True when every table the query reads exists."""
        return all(delta_io.table_exists(p) for p in self.paths(tables, instead).values())

    def statement(self, run_id: str | None = None) -> str:
        """The SQL for run_id, or for the latest run of the run table when run_id is None."""
        if self.run is None:
            return self.sql
        alias, at = self.run
        if run_id is None:
            run_filter = f"run_id = (SELECT run_id FROM {alias} ORDER BY {at} DESC LIMIT 1)"
        else:
            run_filter = "run_id = '" + run_id.replace("'", "''") + "'"
        return self.sql.format(run=run_filter)

    def execute(
        self,
        tables: TablePaths,
        run_id: str | None = None,
        instead: Mapping[str, Path] | None = None,
        versions: Mapping[str, int] | None = None,
    ) -> pa.Table:
        """The query's result; `versions` gives an alias's table version to read, else its current one."""
        return delta_io.query_delta(self.statement(run_id), versions, **self.paths(tables, instead))


BRONZE_ROWS = RunQuery(
    {"b": "bronze"}, "SELECT region, source_system, count(*) AS rows FROM b GROUP BY 1, 2 ORDER BY 1, 2"
)
QUARANTINE_REASONS = RunQuery(
    {"q": "quarantine"}, "SELECT source_system, reason, count(*) AS rows FROM q GROUP BY 1, 2 ORDER BY 1, 2"
)
INGEST_RECONCILIATION = RunQuery(
    {"r": "ingest_runs"},
    "SELECT run_id, source_system, rows_read, rows_landed, rows_quarantined, "
    "rows_read = rows_landed + rows_quarantined AS reconciled FROM r WHERE {run} ORDER BY source_system",
    run=("r", "ingested_at"),
)
CONSENT_DECISIONS = RunQuery(
    {"a": "consent_audit"},
    "SELECT policy_version, decision, reason, count(*) AS records FROM a WHERE attribute = '*' AND {run} "
    "GROUP BY 1, 2, 3 ORDER BY 2, 3",
    run=("a", "decided_at"),
)
SUPPRESSED_ATTRIBUTES = RunQuery(
    {"a": "consent_audit"},
    "SELECT attribute, purpose, count(*) AS records FROM a WHERE decision = 'suppressed' AND {run} "
    "GROUP BY 1, 2 ORDER BY 1",
    run=("a", "decided_at"),
)
CONSENT_RECONCILIATION = RunQuery(
    {"s": "silver", "a": "consent_audit"},
    "SELECT (SELECT count(*) FROM s) AS silver_records, "
    "count(CASE WHEN decision = 'admitted' THEN 1 END) AS admitted, "  # 0, not null, for a run that decided none
    "count(CASE WHEN decision = 'excluded' THEN 1 END) AS excluded FROM a WHERE attribute = '*' AND {run}",
    run=("a", "decided_at"),
)
CONSENT_EVENT_RECONCILIATION = RunQuery(
    {"r": "consent_runs"},
    "SELECT run_id, source_system, events_read, events_landed, events_quarantined, "
    "events_read = events_landed + events_quarantined AS reconciled FROM r WHERE {run} ORDER BY source_system",
    run=("r", "landed_at"),
)
CONSENT_QUARANTINE = RunQuery(
    {"q": "consent_quarantine"},
    "SELECT source_system, reason, count(*) AS events FROM q GROUP BY 1, 2 ORDER BY 1, 2",
)
# Consent events land whether or not a source has delivered their record (it may come in a later batch): these are
# the ledger's events for records silver does not hold, which decide nothing until their record arrives.
CONSENT_FOR_RECORDS_NOT_HELD = RunQuery(
    {"c": "consent_ledger", "s": "silver"},
    "SELECT c.source_system, count(*) AS events, count(DISTINCT c.source_record_id) AS records FROM c "
    "WHERE NOT EXISTS (SELECT 1 FROM s WHERE s.source_system = c.source_system "
    "AND s.source_record_id = c.source_record_id) GROUP BY 1 ORDER BY 1",
)
RESOLUTION_TOTALS = RunQuery(
    {"m": "pairwise_matches", "r": "record_profiles"},
    "SELECT (SELECT count(*) FROM m) AS pairs, count(*) AS records, count(DISTINCT profile_id) AS profiles FROM r",
)
IDENTITY_EVENTS = RunQuery(
    {"e": "identity_events"},
    # A profile split from several others has one event row per profile it came from: counted once.
    "SELECT run_id, event_type, count(DISTINCT profile_id) AS profiles FROM e WHERE {run} GROUP BY 1, 2 ORDER BY 2",
    run=("e", "event_at"),
)
UNIFY_RUN = RunQuery(
    {"u": "unify_runs"},
    "SELECT run_id, profiles, inserted, updated, retired, lineage_rows FROM u WHERE {run}",
    run=("u", "unified_at"),
)
PROFILE_REGIONS = RunQuery(
    {"p": "profiles"}, "SELECT region_count AS regions, count(*) AS profiles FROM p GROUP BY 1 ORDER BY 1"
)
PERMISSIONS_PER_PURPOSE = RunQuery(
    {"p": "profile_permissions"},
    "SELECT purpose, sum(CASE WHEN allowed THEN 1 ELSE 0 END) AS allowed, "
    "sum(CASE WHEN allowed THEN 0 ELSE 1 END) AS not_allowed FROM p GROUP BY 1 ORDER BY 1",
)
ALLOWED_BY_BASIS = RunQuery(
    {"p": "profile_permissions"},
    "SELECT purpose, lawful_basis, count(*) AS profiles FROM p WHERE allowed GROUP BY 1, 2 ORDER BY 1, 2",
)
# silver/admitted_customers holds the last consent gate's admitted records, each with its permitted purposes.
ADMITTED_PER_PURPOSE = RunQuery(
    {"a": "admitted"},
    "SELECT purpose, count(*) AS records FROM "
    "(SELECT unnest(string_to_array(permitted_purposes, ',')) AS purpose FROM a) GROUP BY 1 ORDER BY 1",
)
ADMITTED_RECORDS = RunQuery({"a": "admitted"}, "SELECT count(*) AS records FROM a")
POLICY_VERSIONS = RunQuery(
    {"a": "consent_audit"},
    "SELECT DISTINCT policy_version FROM a WHERE {run} ORDER BY 1",
    run=("a", "decided_at"),
)
MODEL_VERSIONS = RunQuery({"m": "pairwise_matches"}, "SELECT DISTINCT model_version FROM m ORDER BY 1")
MATCH_PROBABILITIES = RunQuery({"m": "pairwise_matches"}, "SELECT match_probability FROM m")
CLUSTER_SIZES = RunQuery(
    {"r": "record_profiles"},
    "SELECT records, count(*) AS profiles FROM (SELECT profile_id, count(*) AS records FROM r GROUP BY 1) "
    "GROUP BY 1 ORDER BY 1",
)
