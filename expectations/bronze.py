"""bronze/customers and the ingest reconciliation (audit/ingest_runs)."""

from __future__ import annotations

import great_expectations as gx
from pyspark.sql import functions as F

from expectations import QualityInputs, TableCheck, holds, in_set, latest_run, must_hold, required_unique


def checks(inputs: QualityInputs) -> list[TableCheck]:
    sources = [s.name for s in inputs.cfg.sources]
    regions = {s.region for s in inputs.cfg.sources}
    bronze = TableCheck(
        suite="bronze",
        table="bronze/customers",
        frame=inputs.bronze,
        expectations=[
            *required_unique(
                "source_system", "source_record_id", "record_hash", description="one row per source record version"
            ),
            in_set("source_system", sources, "every row comes from a configured source"),
            in_set("region", regions, "every row carries its source's region"),
            gx.expectations.ExpectColumnValuesToNotBeNull(column="ingested_at", description="load time recorded"),
        ],
    )
    runs = latest_run(inputs.ingest_runs, "ingested_at").withColumn(
        "reconciled", holds(F.col("rows_read") == F.col("rows_landed") + F.col("rows_quarantined"))
    )
    reconciliation = TableCheck(
        suite="ingest_reconciliation",
        table="audit/ingest_runs",
        frame=runs,
        expectations=[
            must_hold("reconciled", "every source's rows read = rows landed + rows quarantined"),
            in_set("source_system", sources, "counts for configured sources only"),
            gx.expectations.ExpectTableRowCountToEqual(
                value=len(sources), description="the last ingest counted every configured source"
            ),
        ],
    )
    return [bronze, reconciliation]
