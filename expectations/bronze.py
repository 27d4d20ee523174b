"""bronze/customers and the ingest reconciliation (audit/ingest_runs)."""

from __future__ import annotations

import great_expectations as gx
from pyspark.sql import functions as F

from expectations import QualityInputs, TableCheck, holds, in_set, must_hold, required_unique, run_reconciliation
from jobs.canonical import lookup


def checks(inputs: QualityInputs) -> list[TableCheck]:
    sources = [s.name for s in inputs.cfg.sources]
    source_region = lookup({s.name: s.region for s in inputs.cfg.sources})[F.col("source_system")]
    bronze = TableCheck(
        suite="bronze",
        table="bronze/customers",
        frame=inputs.bronze.withColumn("region_of_source", holds(F.col("region") == source_region)),
        expectations=[
            *required_unique(
                "source_system", "source_record_id", "record_hash", description="one row per source record version"
            ),
            in_set("source_system", sources, "every row comes from a configured source"),
            must_hold("region_of_source", "every row carries its source's region"),
            gx.expectations.ExpectColumnValuesToNotBeNull(column="ingested_at", description="load time recorded"),
        ],
    )
    reconciliation = run_reconciliation(
        "ingest_reconciliation",
        "audit/ingest_runs",
        inputs.ingest_runs,
        "ingested_at",
        ("rows_read", "rows_landed", "rows_quarantined"),
        sources,
        "rows",
    )
    return [bronze, reconciliation]
