"""gold/profile_lineage (staged): one lineage row per profile value, naming a permitted purpose and basis."""

from __future__ import annotations

from collections.abc import Sequence

import great_expectations as gx
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expectations import QualityInputs, TableCheck, holds, in_set, must_hold, record_id_of_source, required_unique
from jobs.canonical import LAWFUL_BASES, SUBJECT
from jobs.config import PurposePolicy
from jobs.consent import accepted_bases

# A grant as a lineage row names the consent decision behind its value (the deciding event as consent_event_id).
GRANT_FIELDS = ("purpose", "lawful_basis", "consent_event_id")


def supplied_columns(
    sources: DataFrame, admitted: DataFrame, profiles: DataFrame, columns: Sequence[str], carried: Sequence[str] = ()
) -> DataFrame:
    """Profile sources (profile_id and record) plus `supplied`: the columns whose value the admitted record holds as
    its profile does, compared as unify writes them (cast to string; a value the profile lacks no record supplies).
    Null when the record is not admitted or the profile is not staged. The admitted record's `carried` columns
    come along."""
    record = admitted.select(
        *SUBJECT,
        *carried,
        F.lit(True).alias("_admitted"),
        *[F.col(c).cast("string").alias(f"_r_{c}") for c in columns],
    )
    profile = profiles.select(
        "profile_id", F.lit(True).alias("_profiled"), *[F.col(c).cast("string").alias(f"_p_{c}") for c in columns]
    )
    same = [F.when(F.col(f"_r_{c}") == F.col(f"_p_{c}"), F.lit(c)) for c in columns]
    return (
        sources.select("profile_id", *SUBJECT)
        .join(record, list(SUBJECT), "left")
        .join(profile, "profile_id", "left")
        .select(
            "profile_id",
            *SUBJECT,
            *carried,
            F.when(F.col("_admitted") & F.col("_profiled"), F.filter(F.array(*same), lambda c: c.isNotNull())).alias(
                "supplied"
            ),
        )
    )


def granted_decisions(effective: DataFrame) -> DataFrame:
    """Per record (subject), `grants`: the purpose, lawful basis and deciding event of each purpose its effective
    consent (silver/effective_consent, as of the last consent run's cutoff) grants: not a grant since withdrawn,
    lapsed or replaced."""
    grant = F.struct("purpose", "lawful_basis", F.col("deciding_event_id").alias("consent_event_id"))
    return effective.where(F.col("is_granted")).groupBy(*SUBJECT).agg(F.collect_set(grant).alias("grants"))


def with_lineage_checks(
    lineage: DataFrame, members: DataFrame, permissions: DataFrame, policy: PurposePolicy
) -> DataFrame:
    """Lineage with `record_in_profile` (the source record is one of the profile's `members`, as supplied_columns
    gives them), `record_id_of_source` (record_id names the same record), `value_from_record` (that record holds
    the profile's value of the column), `basis_accepted` (the policy accepts the lawful basis for the purpose),
    `purpose_permitted` (the profile may use it) and
    `consent_event_recorded` (the record's `grants`, as granted_decisions gives them, hold the named consent event
    for that purpose and basis: the reason a value is held is its subject's decision in force).

    The grants ride on the members, so effective consent meets each admitted record once, not each of its lineage
    rows."""
    allowed = permissions.where(F.col("allowed")).select("profile_id", "purpose", F.lit(True).alias("_allowed"))
    named_grant = F.struct(*GRANT_FIELDS)
    return (
        lineage.join(members.withColumn("_member", F.lit(True)), ["profile_id", *SUBJECT], "left")
        .join(allowed, ["profile_id", "purpose"], "left")
        .withColumn("record_in_profile", holds(F.col("_member")))
        .withColumn("record_id_of_source", record_id_of_source())
        .withColumn("value_from_record", holds(F.array_contains("supplied", F.col("column"))))
        .withColumn("purpose_permitted", holds(F.col("_allowed")))
        .withColumn(
            "basis_accepted", holds(F.array_contains(accepted_bases(policy)[F.col("purpose")], F.col("lawful_basis")))
        )
        .withColumn("consent_event_recorded", holds(F.array_contains("grants", named_grant)))
        .drop("_member", "_allowed", "supplied", "grants")
    )


def checks(inputs: QualityInputs) -> list[TableCheck]:
    columns = [c for c in inputs.cfg.survivorship.columns if c in inputs.profiles.columns]
    return [
        TableCheck(
            suite="profile_lineage",
            table="gold/profile_lineage",
            frame=with_lineage_checks(
                inputs.profile_lineage,
                supplied_columns(
                    inputs.profile_sources,
                    inputs.admitted.join(granted_decisions(inputs.effective_consent), list(SUBJECT), "left"),
                    inputs.profiles,
                    columns,
                    carried=["grants"],
                ),
                inputs.profile_permissions,
                inputs.cfg.policy,
            ),
            expectations=[
                *required_unique("profile_id", "column", description="one lineage row per profile value"),
                in_set("lawful_basis", LAWFUL_BASES, "a GDPR Art. 6 lawful basis"),
                in_set(
                    "rule", [r.description for r in inputs.cfg.survivorship.rules], "a configured survivorship rule"
                ),
                gx.expectations.ExpectColumnValuesToNotBeNull(column="rule", description="every value names its rule"),
                must_hold("record_in_profile", "the value comes from one of the profile's source records"),
                must_hold("record_id_of_source", "record_id is <source_system>:<source_record_id>"),
                must_hold("value_from_record", "the named record holds the profile's value of the column"),
                must_hold("basis_accepted", "the policy accepts the lawful basis for the purpose"),
                must_hold("purpose_permitted", "the profile is permitted the purpose the value is held for"),
                must_hold(
                    "consent_event_recorded",
                    "the named event is the record's grant in force of the purpose on the basis (effective consent)",
                ),
            ],
        )
    ]
