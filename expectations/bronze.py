"""bronze/customers and the ingest reconciliation (audit/ingest_runs)."""

from __future__ import annotations

import dataclasses

import great_expectations as gx
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expectations import (
    QualityInputs,
    TableCheck,
    holds,
    in_set,
    must_hold,
    region_of_source,
    required_unique,
    run_reconciliation,
)
from jobs.ingest import DUPLICATE_SOURCE_ID


def with_bronze_rows(ingest_runs: DataFrame, bronze: DataFrame) -> DataFrame:
    """Ingest runs plus `bronze_within_landed`: the bronze rows a run's counted attempt wrote for a source (by their
    run id and load time) are at most the rows it counted as landed (a version landed before keeps its earlier run
    id, or takes this run's when it comes back as its record's current version; quarantined rows never reach
    bronze). A run's audit row takes the load time of the attempt whose counts it holds; the rows an earlier
    attempt of the run wrote (from an extract fixed since) stay in bronze as that attempt's."""
    keys = ["run_id", "source_system", "ingested_at"]
    written = bronze.groupBy(*keys).agg(F.count("*").alias("_written"))
    return (
        ingest_runs.join(written, keys, "left")
        .withColumn("bronze_within_landed", holds(F.coalesce("_written", F.lit(0)) <= F.col("rows_landed")))
        .drop("_written")
    )


def with_quarantine_checks(bronze: DataFrame, quarantine: DataFrame) -> DataFrame:
    """Bronze plus `not_quarantined_as_duplicate`: the run attempt that landed the row (its run id and load time)
    did not also quarantine its source record as a duplicate id (an id the extract repeats lands in no version:
    every copy is quarantined). An earlier attempt of the run, on an extract fixed since, may have."""
    keys = ["run_id", "source_system", "source_record_id", "ingested_at"]
    duplicates = (
        quarantine.where(F.col("reason") == DUPLICATE_SOURCE_ID)
        .select(
            "run_id",
            "source_system",
            "source_record_id",
            F.col("quarantined_at").alias("ingested_at"),
            F.lit(True).alias("_duplicate"),
        )
        .dropDuplicates(keys)
    )
    return (
        bronze.join(F.broadcast(duplicates), keys, "left")
        .withColumn("not_quarantined_as_duplicate", holds(F.col("_duplicate").isNull()))
        .drop("_duplicate")
    )


def checks(inputs: QualityInputs) -> list[TableCheck]:
    sources = [s.name for s in inputs.cfg.sources]
    bronze = TableCheck(
        suite="bronze",
        table="bronze/customers",
        frame=with_quarantine_checks(inputs.bronze, inputs.quarantine).withColumn(
            "region_of_source", region_of_source(inputs.cfg)
        ),
        expectations=[
            *required_unique(
                "source_system", "source_record_id", "record_hash", description="one row per source record version"
            ),
            in_set("source_system", sources, "every row comes from a configured source"),
            must_hold("region_of_source", "every row carries its source's region"),
            must_hold("not_quarantined_as_duplicate", "no row of a record its run quarantined as a duplicate id"),
            gx.expectations.ExpectColumnValuesToNotBeNull(column="ingested_at", description="load time recorded"),
        ],
    )
    reconciliation = run_reconciliation(
        "ingest_reconciliation",
        "audit/ingest_runs",
        with_bronze_rows(inputs.ingest_runs, inputs.bronze),
        "ingested_at",
        ("rows_read", "rows_landed", "rows_quarantined"),
        sources,
        "rows",
    )
    landed = must_hold("bronze_within_landed", "the last run wrote no more bronze rows per source than it landed")
    return [bronze, dataclasses.replace(reconciliation, expectations=[*reconciliation.expectations, landed])]
