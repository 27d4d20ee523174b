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


def summary_sections(cfg: PipelineConfig) -> list[str]:
    """Each section of the run summary, as text."""
    t = cfg.tables
    sections = [
        "Delta tables:\n"
        + "\n".join(
            f"  {name:<12} {path}  (version {delta_io.table_version(path)})"
            for name, path in (("bronze", t.bronze), ("quarantine", t.quarantine), ("ingest_runs", t.ingest_runs))
            if delta_io.table_exists(path)
        )
    ]
    if delta_io.table_exists(t.bronze):
        sections.append(
            _table(
                "Bronze rows per region and source:",
                delta_io.query_delta(
                    "SELECT region, source_system, count(*) AS rows FROM b GROUP BY 1, 2 ORDER BY 1, 2", b=t.bronze
                ),
            )
        )
    if delta_io.table_exists(t.quarantine):
        sections.append(
            _table(
                "Quarantined rows by reason:",
                delta_io.query_delta(
                    "SELECT source_system, reason, count(*) AS rows FROM q GROUP BY 1, 2 ORDER BY 1, 2", q=t.quarantine
                ),
            )
        )
    if delta_io.table_exists(t.ingest_runs):
        sections.append(
            _table(
                "Last ingest run (read = landed + quarantined):",
                delta_io.query_delta(
                    "SELECT run_id, source_system, rows_read, rows_landed, rows_quarantined, "
                    "rows_read = rows_landed + rows_quarantined AS reconciled FROM r "
                    "WHERE ingested_at = (SELECT max(ingested_at) FROM r) ORDER BY source_system",
                    r=t.ingest_runs,
                ),
            )
        )
    return sections


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print where the tables are and what the last run did.")
    parser.add_argument("--conf", help="config directory")
    args = parser.parse_args(argv)
    print("\n\n".join(summary_sections(load_config(args.conf))))


if __name__ == "__main__":
    main()
