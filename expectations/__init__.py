"""Great Expectations suites in code, one module per table or group of related tables.

Each module turns the tables of a run into the DataFrame it validates (the table itself, or the table
with derived check columns such as `consent_compliant`) plus the expectations on it. Derived checks are
booleans and counts, so a failed expectation never carries a data value; `SAFE_RESULT_FORMAT` keeps
GX from sampling values of the personal columns it validates directly (emails, phones).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no usage telemetry from a batch job

import great_expectations as gx
from great_expectations.expectations import Expectation
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from jobs.canonical import END_OF_TEXT, RECORD_ID_SEPARATOR, SUBJECT, lookup
from jobs.config import PipelineConfig
from jobs.profile_ids import PROFILE_ID_PATTERN

# Counts and percentages only: no unexpected values, rows or indexes in results or Data Docs.
SAFE_RESULT_FORMAT: dict[str, object] = {
    "result_format": "SUMMARY",
    "partial_unexpected_count": 0,
    "exclude_unexpected_values": True,
    "include_unexpected_rows": False,
    "return_unexpected_index_query": False,
}

PROFILE_ID_REGEX = f"^{PROFILE_ID_PATTERN}{END_OF_TEXT}"  # read alike by Python and Java


@dataclass(frozen=True)
class QualityInputs:
    """The tables one gate run validates: upstream tables as published, resolve's and unify's as staged."""

    cfg: PipelineConfig
    bronze: DataFrame
    ingest_runs: DataFrame
    silver: DataFrame
    consent_ledger: DataFrame
    effective_consent: DataFrame
    consent_audit: DataFrame
    consent_runs: DataFrame
    admitted: DataFrame
    pairwise_matches: DataFrame
    record_profiles: DataFrame
    profile_registry: DataFrame
    identity_events: DataFrame  # this run's (empty when resolve staged none)
    profiles: DataFrame
    profile_sources: DataFrame
    profile_lineage: DataFrame
    profile_permissions: DataFrame
    previous_profile_sources: DataFrame  # the published profile_sources before this run (empty on the first)
    previous_profile_registry: DataFrame  # the published profile_registry before this run (empty on the first)
    quarantine: DataFrame  # bronze/quarantine (empty when no run quarantined a row)


@dataclass(frozen=True)
class TableCheck:
    """One suite: the frame GX validates and the expectations on it."""

    suite: str
    table: str  # lakehouse-relative name, for reports
    frame: DataFrame
    expectations: Sequence[Expectation]


def holds(condition: Column) -> Column:
    """A check column: true only where the condition is true (a null comparison does not hold)."""
    return F.coalesce(condition, F.lit(False))


def record_id_of_source() -> Column:
    """A check column: the row's record_id is `<source_system>:<source_record_id>`, the record it names by both."""
    return holds(F.col("record_id") == F.concat_ws(RECORD_ID_SEPARATOR, *SUBJECT))


def region_of_source(cfg: PipelineConfig) -> Column:
    """A check column: the row's region is its source system's, as sources.yaml configures it."""
    return holds(F.col("region") == lookup({s.name: s.region for s in cfg.sources})[F.col("source_system")])


def must_hold(column: str, description: str, mostly: float | None = None) -> Expectation:
    """Every value of a boolean check column is true (or at least `mostly` of the non-null ones)."""
    kwargs = {} if mostly is None else {"mostly": mostly}
    return gx.expectations.ExpectColumnValuesToBeInSet(
        column=column, value_set=[True], description=description, **kwargs
    )


def required_unique(*columns: str, description: str) -> list[Expectation]:
    """The key columns are never null and identify one row."""
    not_null = [gx.expectations.ExpectColumnValuesToNotBeNull(column=c, description=description) for c in columns]
    if len(columns) == 1:
        return [*not_null, gx.expectations.ExpectColumnValuesToBeUnique(column=columns[0], description=description)]
    unique = gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=list(columns), description=description)
    return [*not_null, unique]


def in_set(column: str, values: Sequence[str], description: str) -> Expectation:
    return gx.expectations.ExpectColumnValuesToBeInSet(column=column, value_set=sorted(values), description=description)


def well_formed_profile_ids(column: str, description: str = "well-formed profile ids") -> Expectation:
    """Every non-null value of the column is a profile id as jobs.profile_ids issues them."""
    return gx.expectations.ExpectColumnValuesToMatchRegex(
        column=column, regex=PROFILE_ID_REGEX, description=description
    )


def equal_columns(column_a: str, column_b: str, description: str) -> Expectation:
    """Two columns hold the same value on every row (counts of one thing reached two ways)."""
    return gx.expectations.ExpectColumnPairValuesToBeEqual(
        column_A=column_a, column_B=column_b, description=description
    )


def latest_run(df: DataFrame, at: str) -> DataFrame:
    """The rows of the newest run in an audit table (by its timestamp column)."""
    newest = df.join(df.agg(F.max(at).alias(at)), at, "left_semi").select("run_id").distinct()
    return df.join(newest, "run_id", "left_semi")


def run_reconciliation(
    suite: str, table: str, runs: DataFrame, at: str, counts: tuple[str, str, str], sources: Sequence[str], what: str
) -> TableCheck:
    """The latest run's per-source counts in an audit table (read, landed, quarantined column names) reconcile:
    read = landed + quarantined for every one of `sources` and no other; `what` names what was counted."""
    read, landed, quarantined = counts
    latest = latest_run(runs, at).withColumn("reconciled", holds(F.col(read) == F.col(landed) + F.col(quarantined)))
    return TableCheck(
        suite=suite,
        table=table,
        frame=latest,
        expectations=[
            must_hold("reconciled", f"every source's {what} read = landed + quarantined"),
            in_set("source_system", sources, "counts for configured sources only"),
            gx.expectations.ExpectTableRowCountToEqual(
                value=len(sources), description=f"the last run counted the {what} of every configured source"
            ),
        ],
    )
