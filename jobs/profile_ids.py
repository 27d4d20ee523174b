"""Stable profile ids: Splink's cluster ids change from run to run; ours do not.

A persistent mapping record -> profile_id is carried from run to run. Each run's clusters inherit
the previous ids by overlap:

1. every previous profile follows the new cluster holding most of its records (ties: the
   cluster with the smaller key);
2. a cluster followed by several previous profiles keeps the id of the one with the largest
   overlap, and on a tie the oldest (created first, then the smaller id); the others are
   `merged` into it;
3. a cluster no previous profile follows gets a new id: `split` from the profiles its records
   came from, or `created` when none of its records had a profile;
4. a previous profile none of whose records is still clustered is `retired`.

Rerunning on the same clusters therefore changes nothing, and growing data keeps known people's ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

REGISTRY_SCHEMA = (
    "profile_id string, status string, created_at timestamp, created_run_id string, "
    "ended_at timestamp, ended_run_id string, successor_profile_id string"
)
EVENTS_SCHEMA = (
    "run_id string, event_type string, profile_id string, related_profile_id string, records long, event_at timestamp"
)
ACTIVE = "active"


@dataclass
class ProfileIdAssignment:
    """The outcome of one run: record -> profile, the registry after the run, and what changed."""

    assignments: DataFrame  # record_id, profile_id
    registry: DataFrame  # REGISTRY_SCHEMA, every profile ever issued
    events: DataFrame  # EVENTS_SCHEMA, this run's created / merged / split / retired


def new_profile_id(run_id: str, first_record_id: F.Column) -> F.Column:
    """A new id, derived from the run and the cluster's smallest record id (so a rerun issues the same one)."""
    return F.concat(F.lit("pr_"), F.substring(F.sha2(F.concat_ws(":", F.lit(run_id), first_record_id), 256), 1, 20))


def assign_stable_profile_ids(
    clusters: DataFrame, previous: DataFrame, registry: DataFrame, run_id: str, now: datetime
) -> ProfileIdAssignment:
    """Give this run's clusters (record_id, cluster_key) stable profile ids, given the previous
    assignments (record_id, profile_id) and the profile registry."""
    active = registry.where(F.col("status") == ACTIVE).select("profile_id", "created_at")
    overlap = (
        clusters.join(previous, "record_id")
        .groupBy("cluster_key", "profile_id")
        .agg(F.count("*").alias("overlap"))
        .join(active, "profile_id", "left")
    )
    followed = overlap.withColumn(
        "_r", F.row_number().over(Window.partitionBy("profile_id").orderBy(F.desc("overlap"), "cluster_key"))
    ).where("_r = 1")
    ranked = followed.withColumn(
        "_r",
        F.row_number().over(
            Window.partitionBy("cluster_key").orderBy(F.desc("overlap"), F.asc_nulls_last("created_at"), "profile_id")
        ),
    )
    survivors = ranked.where("_r = 1").select("cluster_key", "profile_id")
    merged = (
        ranked.where("_r > 1")
        .join(survivors.withColumnRenamed("profile_id", "related_profile_id"), "cluster_key")
        .select("profile_id", "related_profile_id", "overlap")
    )

    sizes = clusters.groupBy("cluster_key").agg(F.count("*").alias("records"), F.min("record_id").alias("_first"))
    fresh = (
        sizes.join(survivors, "cluster_key", "left_anti")
        .withColumn("profile_id", new_profile_id(run_id, F.col("_first")))
        .select("cluster_key", "profile_id", "records")
    )
    cluster_ids = survivors.unionByName(fresh.select("cluster_key", "profile_id"))
    assignments = clusters.join(cluster_ids, "cluster_key").select("record_id", "profile_id")

    origins = overlap.select("cluster_key", F.col("profile_id").alias("related_profile_id"))
    split_from = fresh.join(origins, "cluster_key", "left")
    still_clustered = overlap.select("profile_id").distinct()
    retired = active.join(still_clustered, "profile_id", "left_anti").select("profile_id")
    at, rid = F.lit(now).cast("timestamp"), F.lit(run_id)
    events = (
        split_from.select(
            F.when(F.col("related_profile_id").isNull(), F.lit("created"))
            .otherwise(F.lit("split"))
            .alias("event_type"),
            "profile_id",
            "related_profile_id",
            "records",
        )
        .unionByName(
            merged.select(
                F.lit("merged").alias("event_type"),
                "profile_id",
                "related_profile_id",
                F.col("overlap").alias("records"),
            )
        )
        .unionByName(
            retired.select(
                F.lit("retired").alias("event_type"),
                "profile_id",
                F.lit(None).cast("string").alias("related_profile_id"),
                F.lit(0).cast("long").alias("records"),
            )
        )
        .select(
            rid.alias("run_id"),
            "event_type",
            "profile_id",
            "related_profile_id",
            F.col("records").cast("long"),
            at.alias("event_at"),
        )
    )

    ended = merged.select("profile_id", F.lit("merged").alias("_status"), "related_profile_id").unionByName(
        retired.select(
            "profile_id", F.lit("retired").alias("_status"), F.lit(None).cast("string").alias("related_profile_id")
        )
    )
    updated = (
        registry.join(ended, "profile_id", "left")
        .select(
            "profile_id",
            F.coalesce("_status", "status").alias("status"),
            "created_at",
            "created_run_id",
            F.when(F.col("_status").isNotNull(), at).otherwise(F.col("ended_at")).alias("ended_at"),
            F.when(F.col("_status").isNotNull(), rid).otherwise(F.col("ended_run_id")).alias("ended_run_id"),
            F.coalesce("related_profile_id", "successor_profile_id").alias("successor_profile_id"),
        )
        .unionByName(
            fresh.select(
                "profile_id",
                F.lit(ACTIVE).alias("status"),
                at.alias("created_at"),
                rid.alias("created_run_id"),
                F.lit(None).cast("timestamp").alias("ended_at"),
                F.lit(None).cast("string").alias("ended_run_id"),
                F.lit(None).cast("string").alias("successor_profile_id"),
            )
        )
    )
    return ProfileIdAssignment(assignments=assignments, registry=updated, events=events)
