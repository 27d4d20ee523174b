"""Unify: resolved records -> golden-profile candidates, with cell-level lineage and per-purpose permissions.

Reads the admitted records (the consent gate's output), their profile ids and pairwise matches as
jobs.resolve staged them, and effective consent, and stages under `staging/gold/` (write-audit-publish:
the quality gate, jobs.quality_gate, validates the candidates and only then merges them into gold):
- profiles: one row per profile, each attribute chosen by conf/survivorship.yaml;
- profile_sources: profile <-> source records, with the match evidence that joins them;
- profile_lineage: per non-null profile cell, the record that supplied it, the rule that chose
  it, and the purpose, lawful basis and consent event that allow holding it;
- profile_permissions: per profile and purpose, whether the profile may be used for it, and why.

A profile may be used for a purpose when the latest consent decision for that purpose across its
records grants it on a basis the policy accepts: a withdrawal in one region is not outweighed by an
older grant in another. A profile value is kept only when a purpose permitted both for its record and
for the profile covers its attribute, so no profile cell lacks a lawful basis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs import delta_io
from jobs.canonical import SILVER_ATTRIBUTES, SUBJECT, lookup
from jobs.config import GOLD_TABLES, PipelineConfig, PurposePolicy, SurvivorshipConfig, SurvivorshipRule
from jobs.consent import NONE_RECORDED, STATUS_PRECEDENCE, accepted_bases
from jobs.errors import IdresError
from jobs.publication import finish_interrupted_publication, require_whole_resolution
from jobs.runner import run_job
from jobs.spark_session import persisting, size_stage_to_input

log = logging.getLogger("idres.unify")

JOB = "unify"
# The columns of the tables unify writes besides gold/profiles (whose follow the survivorship), as the quality gate
# checks them: a column beyond these would reach gold with no lineage or consent check.
PROFILE_PERMISSIONS_COLUMNS = (
    "profile_id",
    "purpose",
    "allowed",
    "lawful_basis",
    "status",
    "deciding_source_system",
    "deciding_source_record_id",
    "deciding_event_id",
    "decided_at",
    "expires_at",
    "policy_version",
)
PROFILE_LINEAGE_COLUMNS = (
    "profile_id",
    "column",
    "attribute",
    "record_id",
    *SUBJECT,
    "rule",
    "purpose",
    "lawful_basis",
    "consent_event_id",
    "policy_version",
)
PROFILE_SOURCES_COLUMNS = (
    "profile_id",
    "record_id",
    *SUBJECT,
    "region",
    "unification_basis",
    "unification_event_id",
    "best_match_record_id",
    "best_match_weight",
    "best_match_probability",
)

# Silver column -> the policy attribute it belongs to (whose purposes justify holding it).
COLUMN_ATTRIBUTE: dict[str, str] = {c: a for a, (_, columns) in SILVER_ATTRIBUTES.items() for c in columns}


def contributing_records(record_profiles: DataFrame, admitted: DataFrame) -> DataFrame:
    """Admitted records with their profile id; records without a profile id do not contribute."""
    return record_profiles.select("profile_id", "record_id", *SUBJECT).join(admitted, list(SUBJECT))


def profile_permissions(contributors: DataFrame, effective: DataFrame, policy: PurposePolicy) -> DataFrame:
    """Per profile and policy purpose: allowed or not, decided by the latest consent event of its records."""
    precedence = F.coalesce(lookup(STATUS_PRECEDENCE)[F.col("effective_status")], F.lit(STATUS_PRECEDENCE["granted"]))
    allowed_bases = accepted_bases(policy)
    # By effective consent's rule (a lapsed grant decides nothing: a record left with one yields to any live
    # decision), then by record.
    latest_first = Window.partitionBy("profile_id", "purpose").orderBy(
        (F.col("effective_status") == "expired").asc(),
        F.col("event_time").desc(),
        precedence.asc(),
        F.col("recorded_at").desc_nulls_last(),
        "deciding_event_id",
        *SUBJECT,
    )
    events = (
        contributors.select("profile_id", *SUBJECT)
        .join(effective, list(SUBJECT))
        .withColumn("_rank", F.row_number().over(latest_first))
        .where("_rank = 1")
    )
    purposes = (
        contributors.select("profile_id")
        .distinct()
        .crossJoin(contributors.sparkSession.createDataFrame([(p,) for p in policy.purposes], "purpose string"))
    )
    return purposes.join(events, ["profile_id", "purpose"], "left").select(
        "profile_id",
        "purpose",
        F.coalesce(
            F.col("is_granted") & F.array_contains(allowed_bases[F.col("purpose")], F.col("lawful_basis")), F.lit(False)
        ).alias("allowed"),
        "lawful_basis",
        F.coalesce(F.col("effective_status"), F.lit(NONE_RECORDED)).alias("status"),
        F.col("source_system").alias("deciding_source_system"),
        F.col("source_record_id").alias("deciding_source_record_id"),
        "deciding_event_id",
        F.col("event_time").alias("decided_at"),
        "expires_at",
        F.lit(policy.version).alias("policy_version"),
    )


def _has(column: str) -> str:
    """The ranking keys' flag: does the record hold `column`, and may it supply it to its profile."""
    return f"_has_{column}"


def ranking_keys(contributors: DataFrame, survivorship: SurvivorshipConfig, policy: PurposePolicy) -> DataFrame:
    """What survivorship ranks contributing records by, and no more: their ids, source and update time, which
    of the rules' columns each holds and may supply (a purpose both it and its profile are permitted covers the
    column: else a record that may not supply a value could win and leave the profile without one), and the
    values most_frequent counts.

    The ranking windows sort these narrow rows instead of whole records (tens of columns, at 1M demo records
    the larger part of unify's time).
    """
    held = dict.fromkeys(c for rule in survivorship.rules for c in rule.columns)
    counted = dict.fromkeys(rule.columns[0] for rule in survivorship.rules if "most_frequent" in rule.order)
    return contributors.select(
        "profile_id",
        "record_id",
        "source_system",
        "updated_at",
        *counted,
        *((F.col(c).isNotNull() & _lawful_purpose(c, policy).isNotNull()).alias(_has(c)) for c in held),
        "_profile_purposes",
    )


def _order(strategy: str, rule: SurvivorshipRule, source_priority: Sequence[str]) -> Column:
    if strategy == "source_priority":
        if not source_priority:  # every source unlisted: all rank alike
            return F.lit(0).asc()
        rank = lookup({s: i for i, s in enumerate(source_priority)})
        return F.coalesce(rank[F.col("source_system")], F.lit(len(source_priority))).asc()
    if strategy == "most_recent":
        return F.col("updated_at").desc_nulls_last()
    if strategy == "most_frequent":
        # Only records that hold the value and may supply it vote: not a missing value, nor one held for a purpose
        # the profile may not use.
        votes = F.count(F.when(F.col(_has(rule.columns[0])), 1))
        return votes.over(Window.partitionBy("profile_id", rule.columns[0])).desc()
    if strategy == "most_complete":
        return reduce(lambda a, b: a + b, [F.col(_has(c)).cast("int") for c in rule.columns]).desc()
    raise IdresError(f"survivorship.yaml: attributes.{rule.attribute}: unknown strategy '{strategy}'")


def _present(rule: SurvivorshipRule) -> Column:
    """True where the record holds rule's attribute: any of its columns (most_complete) or its first."""
    if rule.strategy == "most_complete":
        return reduce(lambda a, b: a | b, [F.col(_has(c)) for c in rule.columns])
    return F.col(_has(rule.columns[0]))


def survives(rule: SurvivorshipRule, source_priority: Sequence[str]) -> Column:
    """Over ranking_keys: true on the one record per profile that supplies rule's attribute: among those
    holding it, the first by strategy and tie-breakers, then by smallest record id."""
    order = [_order(s, rule, source_priority) for s in rule.order]
    ranked = Window.partitionBy("profile_id").orderBy(_present(rule).desc(), *order, "record_id")
    return _present(rule) & (F.row_number().over(ranked) == 1)


def _lawful_purpose(column: str, policy: PurposePolicy) -> Column:
    """The first purpose covering column's attribute that both the record (`_record_purposes`) and the profile
    (`_profile_purposes`) are permitted; null when there is none."""
    chosen = F.lit(None).cast("string")
    for purpose in reversed(policy.attribute_purposes[COLUMN_ATTRIBUTE[column]]):
        both = F.array_contains("_record_purposes", purpose) & F.array_contains("_profile_purposes", purpose)
        chosen = F.when(both, F.lit(purpose)).otherwise(chosen)
    return chosen


def survivorship_cells(
    contributors: DataFrame, allowed: DataFrame, survivorship: SurvivorshipConfig, policy: PurposePolicy
) -> DataFrame:
    """Long form: one row per (profile, column) with the surviving record, rule and purpose.

    `allowed` is (profile_id, _profile_purposes). Cells without a lawful purpose are dropped. Every rule
    ranks the same narrow, profile-partitioned rows (ranking_keys); the winners and the profile's purposes
    then join the whole records once, and each record's winning cells are exploded from it in one pass.
    """
    wins = {rule.attribute: f"_survives_{rule.attribute}" for rule in survivorship.rules}
    purposed = (
        contributors.join(allowed, "profile_id", "left")
        .withColumn("_profile_purposes", F.coalesce("_profile_purposes", F.array().cast("array<string>")))
        .withColumn("_record_purposes", F.split("permitted_purposes", ","))
    )
    winners = ranking_keys(purposed, survivorship, policy).select(
        "profile_id",
        "record_id",
        "_profile_purposes",
        *(survives(rule, survivorship.source_priority).alias(wins[rule.attribute]) for rule in survivorship.rules),
    )
    ranked = contributors.join(winners, ["profile_id", "record_id"]).withColumn(
        "_record_purposes", F.split("permitted_purposes", ",")
    )
    cells = [
        F.when(
            F.col(wins[rule.attribute]) & F.col(column).isNotNull(),
            F.struct(
                F.lit(column).alias("column"),
                F.col(column).cast("string").alias("_value"),
                F.lit(COLUMN_ATTRIBUTE[column]).alias("attribute"),
                F.lit(rule.description).alias("rule"),
                _lawful_purpose(column, policy).alias("purpose"),
            ),
        )
        for rule in survivorship.rules
        for column in rule.columns
    ]
    return (
        ranked.select(
            "profile_id",
            "record_id",
            *SUBJECT,
            F.explode(F.filter(F.array(*cells), lambda c: c.isNotNull())).alias("_cell"),
        )
        .select(
            "profile_id",
            "_cell.column",
            "_cell._value",
            "record_id",
            *SUBJECT,
            "_cell.attribute",
            "_cell.rule",
            "_cell.purpose",
        )
        .where(F.col("purpose").isNotNull())
    )


def profile_lineage(cells: DataFrame, effective: DataFrame, policy: PurposePolicy) -> DataFrame:
    """Cell-level lineage: record, rule, and the purpose, lawful basis and consent event behind each value.

    Only a granted decision justifies a value: a cell whose record's decision for its purpose is no grant (a
    withdrawal landed after the gate admitted the record) gets no basis, which the quality gate refuses.
    """
    consent = effective.where("is_granted").select(
        *SUBJECT, "purpose", "lawful_basis", F.col("deciding_event_id").alias("consent_event_id")
    )
    return (
        cells.join(consent, [*SUBJECT, "purpose"], "left")
        .withColumn("policy_version", F.lit(policy.version))
        .select(*PROFILE_LINEAGE_COLUMNS)
    )


# What a golden profile holds besides its id and surviving values: where its records come from.
PROFILE_SUMMARY_COLUMNS = ("regions", "region_count", "source_systems", "record_count", "last_updated_at")


def golden_profiles(contributors: DataFrame, cells: DataFrame, survivorship: SurvivorshipConfig) -> DataFrame:
    """One row per profile: its surviving values (typed as in silver) and where its records come from."""
    base = contributors.groupBy("profile_id").agg(
        F.array_sort(F.collect_set("region")).alias("regions"),
        F.array_sort(F.collect_set("source_system")).alias("source_systems"),
        F.count("*").alias("record_count"),
        F.max("updated_at").alias("last_updated_at"),
    )
    types = dict(contributors.dtypes)
    columns = survivorship.columns
    wide = (
        cells.groupBy("profile_id")
        .pivot("column", list(columns))
        .agg(F.first("_value"))
        .select("profile_id", *[F.col(c).cast(types[c]).alias(c) for c in columns])
    )
    summary = {"region_count": F.size("regions")}
    return base.join(wide, "profile_id", "left").select(
        "profile_id", *columns, *(summary.get(c, F.col(c)).alias(c) for c in PROFILE_SUMMARY_COLUMNS)
    )


def profile_sources(contributors: DataFrame, pairs: DataFrame) -> DataFrame:
    """Profile <-> source records, each with its strongest match to another record of the same profile."""
    ids = contributors.select("record_id", "profile_id")
    sides = [("record_id_l", "record_id_r"), ("record_id_r", "record_id_l")]
    evidence = reduce(
        DataFrame.unionByName,
        [
            pairs.select(
                F.col(a).alias("record_id"), F.col(b).alias("best_match_record_id"), "match_weight", "match_probability"
            )
            for a, b in sides
        ],
    )
    evidence = (
        evidence.join(ids, "record_id")
        .join(ids.withColumnRenamed("record_id", "best_match_record_id"), ["best_match_record_id", "profile_id"])
        .withColumn(
            "_rank",
            F.row_number().over(
                Window.partitionBy("profile_id", "record_id").orderBy(
                    F.desc("match_probability"), F.desc("match_weight"), "best_match_record_id"
                )
            ),
        )
        .where("_rank = 1")
        .select(
            "profile_id",
            "record_id",
            "best_match_record_id",
            F.col("match_weight").alias("best_match_weight"),
            F.col("match_probability").alias("best_match_probability"),
        )
    )
    return contributors.join(evidence, ["profile_id", "record_id"], "left").select(*PROFILE_SOURCES_COLUMNS)


@dataclass
class GoldTables:
    profiles: DataFrame
    profile_sources: DataFrame
    profile_lineage: DataFrame
    profile_permissions: DataFrame


def build_gold(
    record_profiles: DataFrame,
    admitted: DataFrame,
    pairs: DataFrame,
    effective: DataFrame,
    survivorship: SurvivorshipConfig,
    policy: PurposePolicy,
    keep: Callable[[DataFrame], DataFrame] = lambda df: df,
) -> GoldTables:
    """The four golden-profile tables from resolved, admitted records (pure: DataFrames in, DataFrames out).

    `keep` wraps the intermediates that several tables share, so that writing the four tables computes
    each once (run() persists them).
    """
    contributors = keep(contributing_records(record_profiles, admitted))
    permissions = keep(profile_permissions(contributors, effective, policy))
    allowed = (
        permissions.where("allowed").groupBy("profile_id").agg(F.collect_set("purpose").alias("_profile_purposes"))
    )
    cells = keep(survivorship_cells(contributors, allowed, survivorship, policy))
    return GoldTables(
        profiles=golden_profiles(contributors, cells, survivorship),
        profile_sources=profile_sources(contributors, pairs),
        profile_lineage=profile_lineage(cells, effective, policy),
        profile_permissions=permissions,
    )


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> dict[str, Path]:
    """Build the golden-profile tables and stage them for the quality gate, which publishes them (WAP)."""
    finish_interrupted_publication(cfg)  # before staging over the candidates it would publish
    require_whole_resolution(cfg)
    t = cfg.tables
    for path, stage in (
        (t.admitted, "consent_gate"),
        (t.effective_consent, "consent_gate"),
        (delta_io.staged_or_published(t, "record_profiles"), "resolve"),
        (delta_io.staged_or_published(t, "pairwise_matches"), "resolve"),
    ):
        delta_io.require_table(path, stage)
    size_stage_to_input(spark, cfg.spark, delta_io.row_count(t.admitted))
    with persisting() as keep:
        gold = build_gold(
            delta_io.read_delta(spark, delta_io.staged_or_published(t, "record_profiles")),
            delta_io.read_delta(spark, t.admitted),
            delta_io.read_delta(spark, delta_io.staged_or_published(t, "pairwise_matches")),
            delta_io.read_delta(spark, t.effective_consent),
            cfg.survivorship,
            cfg.policy,
            keep,
        )
        staged = {name: getattr(gold, name) for name in GOLD_TABLES}
        for name, df in staged.items():
            delta_io.overwrite_delta(df, t.staged(name), run_id=run_id, job=JOB)
    log.info("unify: gold candidates staged for the quality gate: %s", ", ".join(staged))
    return {name: t.staged(name) for name in staged}


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    return run_job(JOB, run, argv)


if __name__ == "__main__":
    # Call through the package module, so Spark pickles its functions by reference, not as __main__'s.
    from jobs.unify import main as job_main

    job_main()
