"""gold/profiles (staged): consent compliance, unique well-formed ids, the cluster-size bound."""

from __future__ import annotations

from collections.abc import Sequence

import great_expectations as gx
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expectations import (
    QualityInputs,
    TableCheck,
    equal_columns,
    holds,
    must_hold,
    required_unique,
    well_formed_profile_ids,
)
from jobs.canonical import lookup
from jobs.config import PurposePolicy
from jobs.consent import accepted_bases
from jobs.unify import COLUMN_ATTRIBUTE, PROFILE_SUMMARY_COLUMNS

CONSENT_COMPLIANCE = "every profile value has a lawful basis the policy accepts for a purpose the profile is permitted"


def with_consent_compliance(
    profiles: DataFrame, lineage: DataFrame, permissions: DataFrame, columns: Sequence[str], policy: PurposePolicy
) -> DataFrame:
    """Profiles plus `consent_compliant`: each of the profile's non-null values of columns has a lineage row that
    names a purpose covering the column's attribute, on a lawful basis the policy accepts for that purpose, and the
    profile's permission for that purpose is allowed. A value without lineage is not compliant; a profile without
    values is.

    Lineage rows are gathered per profile and purpose before any join, so the permissions meet one row per profile
    and purpose, not one per value."""
    covering = lookup({c: list(policy.attribute_purposes[COLUMN_ATTRIBUTE[c]]) for c in columns})
    keys = ["profile_id", "purpose"]
    covered = (
        lineage.where(
            F.array_contains(covering[F.col("column")], F.col("purpose"))
            & F.array_contains(accepted_bases(policy)[F.col("purpose")], F.col("lawful_basis"))
        )
        .groupBy(*keys)
        .agg(F.collect_set("column").alias("_columns"))
        .join(permissions.where(F.col("allowed")).select(*keys), keys, "left_semi")
        .groupBy("profile_id")
        .agg(F.flatten(F.collect_list("_columns")).alias("_covered"))
    )
    held = F.filter(F.array(*[F.when(F.col(c).isNotNull(), F.lit(c)) for c in columns]), lambda c: c.isNotNull())
    return (
        profiles.join(covered, "profile_id", "left")
        .withColumn("consent_compliant", F.forall(held, lambda c: holds(F.array_contains("_covered", c))))
        .drop("_covered")
    )


def profile_columns(survivorship_columns: Sequence[str]) -> tuple[str, ...]:
    """The columns of with_profile_checks' frame on good profiles: gold/profiles' and the two checks'."""
    return (
        "profile_id",
        *survivorship_columns,
        *PROFILE_SUMMARY_COLUMNS,
        "consent_compliant",
        "cluster_size",
        "summary_as_sources",
    )


def with_profile_checks(inputs: QualityInputs) -> DataFrame:
    """Profiles with `consent_compliant` (every value compliant), `cluster_size` (source records) and
    `summary_as_sources` (the regions, their count and the source systems are those of its source records)."""
    cfg = inputs.cfg
    sizes = inputs.profile_sources.groupBy("profile_id").agg(
        F.count("*").alias("cluster_size"),
        F.array_sort(F.collect_set("region")).alias("_regions"),
        F.array_sort(F.collect_set("source_system")).alias("_source_systems"),
    )
    as_sources = (
        (F.col("regions") == F.col("_regions"))
        & (F.col("region_count") == F.size("_regions"))
        & (F.col("source_systems") == F.col("_source_systems"))
    )
    return (
        inputs.profiles.transform(
            with_consent_compliance,
            inputs.profile_lineage,
            inputs.profile_permissions,
            cfg.survivorship.columns,
            cfg.policy,
        )
        .join(sizes, "profile_id", "left")
        .withColumn("summary_as_sources", holds(as_sources))
        .drop("_regions", "_source_systems")
    )


def checks(inputs: QualityInputs) -> list[TableCheck]:
    expect = gx.expectations
    return [
        TableCheck(
            suite="profiles",
            table="gold/profiles",
            frame=with_profile_checks(inputs),
            expectations=[
                must_hold("consent_compliant", CONSENT_COMPLIANCE),
                *required_unique("profile_id", description="unique profile ids"),
                well_formed_profile_ids("profile_id"),
                expect.ExpectColumnValuesToNotBeNull(
                    column="cluster_size", description="every profile has source records in gold/profile_sources"
                ),
                expect.ExpectColumnValuesToBeBetween(
                    column="cluster_size",
                    min_value=1,
                    max_value=inputs.cfg.quality.max_cluster_size,
                    description="source records per profile within quality.max_cluster_size",
                ),
                equal_columns("record_count", "cluster_size", "record_count = source records"),
                must_hold("summary_as_sources", "regions, region_count and source_systems are its source records'"),
                # No column beyond the survivorship's reaches gold, where no lineage or consent check covers it.
                expect.ExpectTableColumnsToMatchSet(
                    column_set=list(profile_columns(inputs.cfg.survivorship.columns)),
                    exact_match=True,
                    description="only the survivorship's attributes and the records' summary",
                ),
            ],
        )
    ]
