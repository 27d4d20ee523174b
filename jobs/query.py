"""Analysts' SQL over the lakehouse: DuckDB over delta-rs Arrow datasets, no Spark needed.

    python -m jobs.query "SELECT region_count, count(*) FROM profiles GROUP BY 1"

Every Delta table is a view named as in TablePaths (profiles, profile_sources, profile_lineage,
profile_permissions, record_profiles, pairwise_matches, silver, bronze, ...), read at its current version.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
from deltalake import DeltaTable
from tabulate import tabulate

from jobs import delta_io
from jobs.config import PipelineConfig, TablePaths, load_config

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def connect(cfg: PipelineConfig) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view of every existing Delta table of the lakehouse."""
    con = duckdb.connect()
    for name, path in cfg.tables.all().items():
        if delta_io.table_exists(path):
            con.register(name, DeltaTable(str(path)).to_pyarrow_dataset())
    return con


def query(cfg: PipelineConfig, sql: str) -> pa.Table:
    """The result of sql over the lakehouse, as Arrow."""
    return connect(cfg).sql(sql).to_arrow_table()


def safe_cell(value: object) -> object:
    """A cell that a spreadsheet will not run as a formula (OWASP CSV injection): prefixed with a quote."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) else value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run SQL (DuckDB dialect) over the idres Delta tables.")
    parser.add_argument("sql", help="the query; tables: " + ", ".join(TablePaths(Path(".")).all()))
    parser.add_argument("--conf", help="config directory")
    parser.add_argument("--format", choices=("table", "csv"), default="table")
    args = parser.parse_args(argv)
    cfg = load_config(args.conf)
    result = query(cfg, args.sql)
    rows = [[safe_cell(v) for v in row.values()] for row in result.to_pylist()]
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(result.column_names)
        writer.writerows(rows)
    else:
        print(tabulate(rows, headers=result.column_names, tablefmt="simple"))


if __name__ == "__main__":
    main()
