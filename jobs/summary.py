"""The `make run` summary: where the tables are and what the last run did. Counts only, never values."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pyarrow as pa
from tabulate import tabulate

from jobs import delta_io
from jobs import run_queries as q
from jobs.config import PipelineConfig, load_config
from jobs.errors import IdresError
from jobs.publication import complete_for_readers
from jobs.report import gate_verdict, latest_auditor_report, load_quality
from jobs.run_queries import RunQuery


def _table(title: str, table: pa.Table) -> str:
    rows = table.to_pylist()
    body = tabulate(rows, headers="keys", tablefmt="simple", disable_numparse=True) if rows else "(none)"
    return title + "\n" + "\n".join("  " + line for line in body.splitlines())


# (title, query); a section shows once its tables exist. Queries about a run show each table's latest run.
SECTIONS: tuple[tuple[str, RunQuery], ...] = (
    ("Bronze rows per region and source:", q.BRONZE_ROWS),
    ("Quarantined rows by reason:", q.QUARANTINE_REASONS),
    ("Last ingest run (read = landed + quarantined):", q.INGEST_RECONCILIATION),
    ("Consent gate, last run: records admitted and excluded by reason:", q.CONSENT_DECISIONS),
    ("Consent gate, last run: attributes suppressed (no permitted purpose):", q.SUPPRESSED_ATTRIBUTES),
    ("Consent gate reconciliation (silver records = admitted + excluded):", q.CONSENT_RECONCILIATION),
    ("Last consent gate, consent events per feed (read = landed + quarantined):", q.CONSENT_EVENT_RECONCILIATION),
    ("Consent events quarantined by reason:", q.CONSENT_QUARANTINE),
    ("Consent events for records no source has delivered, per feed:", q.CONSENT_FOR_RECORDS_NOT_HELD),
    ("Identity resolution: pairwise matches (p >= match threshold), records and profiles:", q.RESOLUTION_TOTALS),
    ("Identity events of the latest run that changed profiles:", q.IDENTITY_EVENTS),
    ("Golden profiles, last unify run (inserted, updated, retired):", q.UNIFY_RUN),
    ("Golden profiles by number of regions they span:", q.PROFILE_REGIONS),
    ("Profile permissions per purpose:", q.PERMISSIONS_PER_PURPOSE),
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
    for title, query in SECTIONS:
        if query.available(t):
            sections.append(_table(title, query.execute(t)))
    report = latest_auditor_report(cfg)
    if report is not None:
        try:
            verdict, _ = gate_verdict(load_quality(report.parent))
        except IdresError as err:  # the other sections still hold
            verdict = f"unknown ({err})"
        sections.append(f"Quality gate of the last run: {verdict}")
        sections.append(f"Auditor report: {report.as_uri()}")
    return sections


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print where the tables are and what the last run did.")
    parser.add_argument("--conf", help="config directory")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.conf)
        complete_for_readers(cfg, "summary")
    except IdresError as err:  # a config with problems, a lakehouse busy past the lock's timeout
        parser.exit(2, f"summary: {err}\n")
    print("\n\n".join(summary_sections(cfg)))


if __name__ == "__main__":
    main()
