"""silver/consent_ledger, its feeds' reconciliation (audit/consent_runs) and the consent gate's
(audit/consent_decisions)."""

from __future__ import annotations

from collections.abc import Sequence

import great_expectations as gx
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expectations import (
    QualityInputs,
    TableCheck,
    holds,
    in_set,
    latest_run,
    must_hold,
    required_unique,
    run_reconciliation,
)
from jobs.canonical import CONSENT_STATUSES, LAWFUL_BASES


def with_purpose_checks(ledger: DataFrame, consent_runs: DataFrame, purposes: Sequence[str]) -> DataFrame:
    """The ledger plus `purpose_declared`: an event the last consent run landed names a purpose the policy
    declares. The ledger keeps every event for good, so one landed under an earlier policy may name a purpose
    since retired (the gate ignores those): checking it again would refuse every run after the change."""
    last_run = latest_run(consent_runs, "landed_at").select(F.col("run_id").alias("_last_run")).distinct()
    return (
        ledger.join(F.broadcast(last_run), F.col("run_id") == F.col("_last_run"), "left")
        .withColumn("purpose_declared", holds(F.col("_last_run").isNull() | F.col("purpose").isin(*purposes)))
        .drop("_last_run")
    )


def checks(inputs: QualityInputs) -> list[TableCheck]:
    expect = gx.expectations
    ledger = TableCheck(
        suite="consent_ledger",
        table="silver/consent_ledger",
        frame=with_purpose_checks(inputs.consent_ledger, inputs.consent_runs, list(inputs.cfg.policy.purpose_bases)),
        expectations=[
            *required_unique("source_system", "event_id", description="one row per consent event"),
            in_set("lawful_basis", LAWFUL_BASES, "a GDPR Art. 6 lawful basis"),
            must_hold("purpose_declared", "every event the last run landed names a purpose the policy declares"),
            in_set("status", CONSENT_STATUSES, "a known consent status"),
            expect.ExpectColumnValuesToNotBeNull(column="source_record_id", description="every event has a subject"),
            expect.ExpectColumnValuesToNotBeNull(column="event_time", description="every event has a time"),
        ],
    )
    feeds = [s.name for s in inputs.cfg.sources if s.consent_feed is not None]
    landing = run_reconciliation(
        "consent_event_reconciliation",
        "audit/consent_runs",
        inputs.consent_runs,
        "landed_at",
        ("events_read", "events_landed", "events_quarantined"),
        feeds,
        "consent events",
    )
    decisions = latest_run(inputs.consent_audit, "decided_at").where(F.col("attribute") == "*")
    decided = (
        decisions.agg(
            F.count_distinct(*("source_system", "source_record_id")).alias("records_decided"),
            F.count("*").alias("decisions"),
            F.count(F.when(F.col("decision") == "admitted", True)).alias("records_admitted"),  # 0, not null, on none
        )
        .crossJoin(
            inputs.silver.agg(F.count("*").alias("silver_records")),
        )
        .crossJoin(inputs.admitted.agg(F.count("*").alias("admitted_rows")))
    )
    reconciliation = TableCheck(
        suite="consent_reconciliation",
        table="audit/consent_decisions",
        frame=decided,
        expectations=[
            expect.ExpectColumnPairValuesToBeEqual(
                column_A="silver_records",
                column_B="records_decided",
                description="the gate decided every silver record (admitted + excluded = silver)",
            ),
            expect.ExpectColumnPairValuesToBeEqual(
                column_A="records_decided", column_B="decisions", description="one record-level decision per record"
            ),
            expect.ExpectColumnPairValuesToBeEqual(
                column_A="records_admitted",
                column_B="admitted_rows",
                description="the admitted table holds exactly the admitted records",
            ),
        ],
    )
    return [ledger, landing, reconciliation]
