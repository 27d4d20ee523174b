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


def cell_compliance(
    profiles: DataFrame, lineage: DataFrame, permissions: DataFrame, columns: Sequence[str], policy: PurposePolicy
) -> DataFrame:
    """Per non-null profile cell (profile_id, column): `compliant` when its lineage row names a purpose that
    covers the column's attribute, a lawful basis the policy accepts for that purpose, and the profile's
    permission for that purpose is allowed. A value without lineage is not compliant."""
    cells = profiles.select(
        "profile_id",
        F.explode(
            F.array(*[F.struct(F.lit(c).alias("column"), F.col(c).isNotNull().alias("has_value")) for c in columns])
        ).alias("cell"),
    ).select("profile_id", "cell.column", "cell.has_value")
    covering = lookup({c: list(policy.attribute_purposes[COLUMN_ATTRIBUTE[c]]) for c in columns})
    allowed = permissions.where(F.col("allowed")).select("profile_id", "purpose", F.lit(True).alias("_permitted"))
    return (
        cells.where("has_value")
        .join(lineage.select("profile_id", "column", "purpose", "lawful_basis"), ["profile_id", "column"], "left")
        .join(allowed, ["profile_id", "purpose"], "left")
        .withColumn(
            "compliant",
            holds(
                F.col("_permitted")
                & F.array_contains(covering[F.col("column")], F.col("purpose"))
                & F.array_contains(accepted_bases(policy)[F.col("purpose")], F.col("lawful_basis"))
            ),
        )
        .select("profile_id", "column", "compliant")
    )


def profile_columns(survivorship_columns: Sequence[str]) -> tuple[str, ...]:
    """The columns of with_profile_checks' frame on good profiles: gold/profiles' and the two checks'."""
    return ("profile_id", *survivorship_columns, *PROFILE_SUMMARY_COLUMNS, "consent_compliant", "cluster_size")


def with_profile_checks(inputs: QualityInputs) -> DataFrame:
    """Profiles with `consent_compliant` (every value compliant) and `cluster_size` (source records)."""
    cfg = inputs.cfg
    compliance = (
        cell_compliance(
            inputs.profiles,
            inputs.profile_lineage,
            inputs.profile_permissions,
            cfg.survivorship.columns,
            cfg.policy,
        )
        .groupBy("profile_id")
        .agg(F.bool_and("compliant").alias("_compliant"))
    )
    sizes = inputs.profile_sources.groupBy("profile_id").agg(F.count("*").alias("cluster_size"))
    return (
        inputs.profiles.join(compliance, "profile_id", "left")
        .join(sizes, "profile_id", "left")
        .withColumn("consent_compliant", F.coalesce("_compliant", F.lit(True)))  # a profile with no values
        .drop("_compliant")
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
                # No column beyond the survivorship's reaches gold, where no lineage or consent check covers it.
                expect.ExpectTableColumnsToMatchSet(
                    column_set=list(profile_columns(inputs.cfg.survivorship.columns)),
                    exact_match=True,
                    description="only the survivorship's attributes and the records' summary",
                ),
            ],
        )
    ]
