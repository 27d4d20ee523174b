"""gold/record_profiles (staged): each admitted record under one active profile, as gold/profile_sources has it."""

from __future__ import annotations

import great_expectations as gx
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expectations import (
    QualityInputs,
    TableCheck,
    holds,
    in_set,
    must_hold,
    record_id_of_source,
    required_unique,
    well_formed_profile_ids,
)
from jobs.canonical import SUBJECT
from jobs.profile_ids import ACTIVE


def with_assignment_checks(record_profiles: DataFrame, sources: DataFrame, registry: DataFrame) -> DataFrame:
    """Record profiles with `record_id_of_source` (the id is `<source_system>:<source_record_id>`),
    `sources_agree` (gold/profile_sources holds the record under the same profile) and `profile_active` (the
    registry has the profile as active)."""
    unified = sources.select(*SUBJECT, F.col("profile_id").alias("_unified"))
    active = registry.where(F.col("status") == ACTIVE).select("profile_id", F.lit(True).alias("_active"))
    return (
        record_profiles.join(unified, list(SUBJECT), "left")
        .join(active, "profile_id", "left")
        .withColumn("record_id_of_source", record_id_of_source())
        .withColumn("sources_agree", holds(F.col("_unified") == F.col("profile_id")))
        .withColumn("profile_active", holds(F.col("_active")))
        .drop("_unified", "_active")
    )


def checks(inputs: QualityInputs) -> list[TableCheck]:
    return [
        TableCheck(
            suite="record_profiles",
            table="gold/record_profiles",
            frame=with_assignment_checks(inputs.record_profiles, inputs.profile_sources, inputs.profile_registry),
            expectations=[
                *required_unique("record_id", description="each record is assigned one profile"),
                must_hold("record_id_of_source", "record_id is <source_system>:<source_record_id>"),
                in_set("source_system", [s.name for s in inputs.cfg.sources], "a configured source"),
                gx.expectations.ExpectColumnValuesToNotBeNull(column="profile_id", description="every record profiled"),
                well_formed_profile_ids("profile_id"),
                # The profile_sources suite holds those to the admitted records and to staged profiles, so with
                # the row count this one is exactly the admitted records, each under a staged profile.
                must_hold("sources_agree", "gold/profile_sources holds the record under the same profile"),
                gx.expectations.ExpectTableRowCountToEqual(
                    value=inputs.admitted.count(),
                    description="reconciliation: every record the consent gate admitted is assigned a profile",
                ),
                must_hold("profile_active", "every assigned profile is active in the registry"),
            ],
        )
    ]
