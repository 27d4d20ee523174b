"""Resolve: admitted records -> pairwise matches -> clusters -> stable profile ids.

Uses the latest Splink model trained with the current conf/splink.yaml, and trains one only when
none exists. Splink runs on Spark or on DuckDB inside the driver (conf/pipeline.yaml `resolve`,
jobs.linkage.choose_engine); either way the results come back as Spark DataFrames and everything
after clustering is the same. Only admitted records (see jobs.consent) are resolved.
Writes, all by MERGE so a rerun commits nothing:
- gold/pairwise_matches: both record ids, match weight and probability, and each comparison's
  level (gamma_*) to explain the match;
- gold/record_profiles: record -> profile_id;
- gold/profile_registry: every profile id ever issued, active or merged/retired, and its successor;
- audit/identity_events: profiles created, merged, split and retired, with the run id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import delta_io
from jobs.config import PipelineConfig
from jobs.linkage import (
    ModelVersion,
    latest_model,
    linkage_input,
    model_settings,
    opened_linker,
    pick_engine,
    splink_columns,
    to_spark,
)
from jobs.profile_ids import REGISTRY_SCHEMA, assign_stable_profile_ids
from jobs.runner import run_job
from jobs.spark_session import persisting, size_stage_to_input
from jobs.train import train_and_save

log = logging.getLogger("idres.resolve")


@dataclass
class ResolveResult:
    run_id: str
    model_version: str
    engine: str
    records: int = 0
    pairs: int = 0
    profiles: int = 0
    events: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # Splink's predict and cluster steps, for benchmarks


def predict_and_cluster(
    spark: SparkSession,
    cfg: PipelineConfig,
    records: DataFrame,
    model: ModelVersion,
    engine: str,
    seconds: dict[str, float] | None = None,
) -> tuple[DataFrame, DataFrame]:
    """On `engine`, Splink predictions above the match probability and clusters (record_id, cluster_key)
    at the cluster probability (conf/splink.yaml thresholds), as Spark DataFrames.

    When `seconds` is given, the wall time of Splink's predict and cluster steps goes into it (both
    engines materialize their output in these calls).
    """
    linkage = cfg.linkage
    with opened_linker(spark, records, model_settings(model, linkage, engine), engine) as linker:
        started = time.perf_counter()
        predictions = linker.inference.predict(threshold_match_probability=linkage.match_probability)
        predicted = time.perf_counter()
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
            predictions, threshold_match_probability=linkage.cluster_probability
        )
        if seconds is not None:
            seconds.update(predict=predicted - started, cluster=time.perf_counter() - predicted)
        gammas = sorted(c for c in splink_columns(predictions) if c.startswith("gamma_"))
        pairs = to_spark(
            spark, predictions, engine, ["record_id_l", "record_id_r", "match_weight", "match_probability", *gammas]
        ).withColumn("model_version", F.lit(model.version))
        clustered = to_spark(spark, clusters, engine, ["record_id", "cluster_id"]).select(
            "record_id", F.col("cluster_id").cast("string").alias("cluster_key")
        )
    return pairs, clustered


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> ResolveResult:
    """Resolve the admitted records into profiles with stable ids."""
    t = cfg.tables
    now = datetime.now(UTC).replace(microsecond=0)
    with persisting() as keep:
        records = keep(linkage_input(delta_io.read_delta(spark, t.admitted), cfg.linkage))
        count = records.count()
        size_stage_to_input(spark, cfg.spark, count)
        engine = pick_engine(spark, cfg.resolve, count)
        model = latest_model(cfg.models, cfg.linkage) or train_and_save(spark, cfg, records, engine)
        result = ResolveResult(run_id=run_id, model_version=model.version, engine=engine, records=count)
        if result.records:
            pairs, clusters = predict_and_cluster(spark, cfg, records, model, engine, result.seconds)
        else:
            pairs = spark.createDataFrame(
                [],
                "record_id_l string, record_id_r string, match_weight double, "
                "match_probability double, model_version string",
            )
            clusters = spark.createDataFrame([], "record_id string, cluster_key string")
        pairs, clusters = keep(pairs), keep(clusters)
        previous = delta_io.read_delta_or_empty(spark, t.record_profiles, "record_id string, profile_id string")
        previous = keep(previous.select("record_id", "profile_id"))
        registry = keep(delta_io.read_delta_or_empty(spark, t.profile_registry, REGISTRY_SCHEMA))
        previous.count(), registry.count()  # pinned before this run rewrites the tables they come from

        ids = assign_stable_profile_ids(clusters, previous, registry, run_id, now)
        record_profiles = ids.assignments.join(records.select("record_id", "source_system"), "record_id").withColumn(
            "source_record_id", F.expr("substring(record_id, length(source_system) + 2)")
        )
        events = keep(
            ids.events.withColumn(
                "event_id", F.sha2(F.concat_ws("|", "run_id", "event_type", "profile_id", "related_profile_id"), 256)
            )
        )

        job = {"run_id": run_id, "job": "resolve"}
        delta_io.merge_delta(
            pairs,
            t.pairwise_matches,
            keys=("record_id_l", "record_id_r"),
            update_changed=True,
            delete_missing=True,
            **job,
        )
        delta_io.merge_delta(
            record_profiles, t.record_profiles, keys=("record_id",), update_changed=True, delete_missing=True, **job
        )
        delta_io.merge_delta(ids.registry, t.profile_registry, keys=("profile_id",), update_changed=True, **job)
        delta_io.merge_delta(events, t.identity_events, keys=("event_id",), **job)

        result.pairs = pairs.count()
        result.profiles = record_profiles.select("profile_id").distinct().count()
        result.events = {r["event_type"]: r["count"] for r in events.groupBy("event_type").count().collect()}
    log.info(
        "resolve (model %s on %s): %d records, %d pairs, %d profiles, events %s",
        model.version,
        engine,
        result.records,
        result.pairs,
        result.profiles,
        result.events,
    )
    return result


def main(argv: Sequence[str] | None = None) -> ResolveResult:
    return run_job("resolve", run, argv)


if __name__ == "__main__":
    # Call through the package module, so Spark pickles its functions by reference, not as __main__'s.
    from jobs.resolve import main as job_main

    job_main()
