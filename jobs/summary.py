"""The `make run` summary: where the tables are and what the last run did. Counts only, never values."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pyarrow as pa
from tabulate import tabulate

from jobs import delta_io
from jobs.config import PipelineConfig, load_config


def _table(title: str, table: pa.Table) -> str:
    rows = table.to_pylist()
    body = tabulate(rows, headers="keys", tablefmt="simple") if rows else "(none)"
    return title + "\n" + "\n".join("  " + line for line in body.splitlines())


LATEST_RUN = "run_id = (SELECT run_id FROM {t} ORDER BY {at} DESC LIMIT 1)"

# (title, table alias -> TablePaths attribute, SQL). A section shows once its tables exist.
SECTIONS: tuple[tuple[str, dict[str, str], str], ...] = (
    (
        "Bronze rows per region and source:",
        {"b": "bronze"},
        "SELECT region, source_system, count(*) AS rows FROM b GROUP BY 1, 2 ORDER BY 1, 2",
    ),
    (
        "Quarantined rows by reason:",
        {"q": "quarantine"},
        "SELECT source_system, reason, count(*) AS rows FROM q GROUP BY 1, 2 ORDER BY 1, 2",
    ),
    (
        "Last ingest run (read = landed + quarantined):",
        {"r": "ingest_runs"},
        "SELECT run_id, source_system, rows_read, rows_landed, rows_quarantined, "
        "rows_read = rows_landed + rows_quarantined AS reconciled FROM r "
        "WHERE " + LATEST_RUN.format(t="r", at="ingested_at") + " ORDER BY source_system",
    ),
    (
        "Consent gate, last run: records admitted and excluded by reason:",
        {"a": "consent_audit"},
        "SELECT policy_version, decision, reason, count(*) AS records FROM a WHERE attribute = '*' AND "
        + LATEST_RUN.format(t="a", at="decided_at")
        + " GROUP BY 1, 2, 3 ORDER BY 2, 3",
    ),
    (
        "Consent gate, last run: attributes suppressed (no permitted purpose):",
        {"a": "consent_audit"},
        "SELECT attribute, purpose, count(*) AS records FROM a WHERE decision = 'suppressed' AND "
        + LATEST_RUN.format(t="a", at="decided_at")
        + " GROUP BY 1, 2 ORDER BY 1",
    ),
    (
        "Consent gate reconciliation (silver records = admitted + excluded):",
        {"s": "silver", "a": "consent_audit"},
        "SELECT (SELECT count(*) FROM s) AS silver_records, "
        "sum(CASE WHEN decision = 'admitted' THEN 1 ELSE 0 END) AS admitted, "
        "sum(CASE WHEN decision = 'excluded' THEN 1 ELSE 0 END) AS excluded FROM a WHERE attribute = '*' AND "
        + LATEST_RUN.format(t="a", at="decided_at"),
    ),
    (
        "Consent events quarantined by reason:",
        {"q": "consent_quarantine"},
        "SELECT source_system, reason, count(*) AS events FROM q GROUP BY 1, 2 ORDER BY 1, 2",
    ),
    (
        "Identity resolution: pairwise matches (p >= match threshold), records and profiles:",
        {"m": "pairwise_matches", "r": "record_profiles"},
        "SELECT (SELECT count(*) FROM m) AS pairs, count(*) AS records, count(DISTINCT profile_id) AS profiles FROM r",
    ),
    (
        "Identity events of the latest run that changed profiles:",
        {"e": "identity_events"},
        "SELECT run_id, event_type, count(*) AS profiles FROM e WHERE "
        + LATEST_RUN.format(t="e", at="event_at")
        + " GROUP BY 1, 2 ORDER BY 2",
    ),
    (
        "Golden profiles, last unify run (inserted, updated, retired):",
        {"u": "unify_runs"},
        "SELECT run_id, profiles, inserted, updated, retired, lineage_rows FROM u WHERE "
        + LATEST_RUN.format(t="u", at="unified_at"),
    ),
    (
        "Golden profiles by number of regions they span:",
        {"p": "profiles"},
        "SELECT region_count AS regions, count(*) AS profiles FROM p GROUP BY 1 ORDER BY 1",
    ),
    (
        "Profile permissions per purpose:",
        {"p": "profile_permissions"},
        "SELECT purpose, sum(CASE WHEN allowed THEN 1 ELSE 0 END) AS allowed, "
        "sum(CASE WHEN allowed THEN 0 ELSE 1 END) AS not_allowed FROM p GROUP BY 1 ORDER BY 1",
    ),
)


def summary_sections(cfg: PipelineConfig) -> list[str]:
    """Each section of the run summary, as text."""
    t = cfg.tables
    located = list(t.all().items())
    sections = [
        "Delta tables:\n"
        + "\n".join(
            f"  {name:<20} {path}  (version {delta_io.table_version(path)})"
            for name, path in located
            if delta_io.table_exists(path)
        )
    ]
    for title, aliases, sql in SECTIONS:
        paths = {alias: getattr(t, attr) for alias, attr in aliases.items()}
        if all(delta_io.table_exists(p) for p in paths.values()):
            sections.append(_table(title, delta_io.query_delta(sql, **paths)))
    return sections


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print where the tables are and what the last run did.")
    parser.add_argument("--conf", help="config directory")
    args = parser.parse_args(argv)
    print("\n\n".join(summary_sections(load_config(args.conf))))


if __name__ == "__main__":
    main()
