"""gold/profile_lineage (staged): one lineage row per profile value, naming a permitted purpose and basis."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expectations import QualityInputs, TableCheck, holds, in_set, must_hold, required_unique
from jobs.canonical import LAWFUL_BASES, SUBJECT
from jobs.config import PurposePolicy
from jobs.consent import accepted_bases


def with_lineage_checks(
    lineage: DataFrame, sources: DataFrame, permissions: DataFrame, policy: PurposePolicy
) -> DataFrame:
    """Lineage with `record_in_profile` (the source record is one of the profile's), `basis_accepted` (the
    policy accepts the lawful basis for the purpose) and `purpose_permitted` (the profile may use it)."""
    members = sources.select("profile_id", *SUBJECT, F.lit(True).alias("_member"))
    allowed = permissions.where(F.col("allowed")).select("profile_id", "purpose", F.lit(True).alias("_allowed"))
    return (
        lineage.join(members, ["profile_id", *SUBJECT], "left")
        .join(allowed, ["profile_id", "purpose"], "left")
        .withColumn("record_in_profile", holds(F.col("_member")))
        .withColumn("purpose_permitted", holds(F.col("_allowed")))
        .withColumn(
            "basis_accepted", holds(F.array_contains(accepted_bases(policy)[F.col("purpose")], F.col("lawful_basis")))
        )
        .drop("_member", "_allowed")
    )


def checks(inputs: QualityInputs) -> list[TableCheck]:
    return [
        TableCheck(
            suite="profile_lineage",
            table="gold/profile_lineage",
            frame=with_lineage_checks(
                inputs.profile_lineage, inputs.profile_sources, inputs.profile_permissions, inputs.cfg.policy
            ),
            expectations=[
                *required_unique("profile_id", "column", description="one lineage row per profile value"),
                in_set("lawful_basis", LAWFUL_BASES, "a GDPR Art. 6 lawful basis"),
                in_set(
                    "rule", [r.description for r in inputs.cfg.survivorship.rules], "a configured survivorship rule"
                ),
                must_hold("record_in_profile", "the value comes from one of the profile's source records"),
                must_hold("basis_accepted", "the policy accepts the lawful basis for the purpose"),
                must_hold("purpose_permitted", "the profile is permitted the purpose the value is held for"),
            ],
        )
    ]
