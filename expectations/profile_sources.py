"""gold/profile_sources (staged): every admitted record in one profile, and profile-id churn within bound."""

from __future__ import annotations

import great_expectations as gx
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expectations import (
    QualityInputs,
    TableCheck,
    holds,
    must_hold,
    record_id_of_source,
    region_of_source,
    required_unique,
)
from jobs.canonical import SUBJECT

UNIFICATION = ("unification_basis", "unification_event_id")  # the admitted record's grant to be unified


def with_source_checks(sources: DataFrame, profiles: DataFrame, previous: DataFrame, admitted: DataFrame) -> DataFrame:
    """Sources with `profile_exists`, `record_admitted` (the consent gate admitted it), `unification_as_admitted`
    (the lawful basis and event it names for its unification are those the gate admitted it on),
    `record_id_of_source` (record_id names the same record, by which the publication merges the table) and
    `profile_id_kept`: whether a record that was already published keeps its profile id (null for records new in
    this run, which no churn bound applies to)."""
    before = previous.select(*SUBJECT, F.col("profile_id").alias("_before"))
    published = profiles.select("profile_id", F.lit(True).alias("_exists"))
    gated = admitted.select(*SUBJECT, F.lit(True).alias("_admitted"), *[F.col(c).alias(f"_{c}") for c in UNIFICATION])
    as_admitted = [F.col(c).eqNullSafe(F.col(f"_{c}")) for c in UNIFICATION]
    return (
        sources.join(published, "profile_id", "left")
        .join(before, list(SUBJECT), "left")
        .join(gated, list(SUBJECT), "left")
        .withColumn("profile_exists", holds(F.col("_exists")))
        .withColumn("record_admitted", holds(F.col("_admitted")))
        .withColumn("unification_as_admitted", holds(F.col("_admitted") & as_admitted[0] & as_admitted[1]))
        .withColumn("record_id_of_source", record_id_of_source())
        .withColumn("profile_id_kept", F.when(F.col("_before").isNotNull(), F.col("_before") == F.col("profile_id")))
        .drop("_exists", "_before", "_admitted", *[f"_{c}" for c in UNIFICATION])
    )


def checks(inputs: QualityInputs) -> list[TableCheck]:
    churn = inputs.cfg.quality.max_profile_id_churn
    return [
        TableCheck(
            suite="profile_sources",
            table="gold/profile_sources",
            frame=with_source_checks(
                inputs.profile_sources, inputs.profiles, inputs.previous_profile_sources, inputs.admitted
            ).withColumn("region_of_source", region_of_source(inputs.cfg)),
            expectations=[
                *required_unique(*SUBJECT, description="each source record belongs to one profile"),
                *required_unique("record_id", description="each source record belongs to one profile"),
                must_hold("record_id_of_source", "record_id is <source_system>:<source_record_id>"),
                must_hold("region_of_source", "every record carries its source's region"),
                must_hold(
                    "unification_as_admitted",
                    "the unification basis and event are those the consent gate admitted the record on",
                ),
                must_hold("profile_exists", "every source record points at a profile"),
                # With the row count: the records in profiles are exactly those admitted, none swapped for another.
                must_hold("record_admitted", "every source record was admitted by the consent gate"),
                gx.expectations.ExpectTableRowCountToEqual(
                    value=inputs.admitted.count(),
                    description="reconciliation: every record the consent gate admitted is in a profile",
                ),
                must_hold(
                    "profile_id_kept",
                    f"profile-id churn against the previous run within {churn:.0%} (quality.max_profile_id_churn)",
                    mostly=1 - churn,
                ),
            ],
        )
    ]
