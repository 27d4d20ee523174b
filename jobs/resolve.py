"""Resolve: admitted records -> pairwise matches -> clusters -> stable profile ids.

Uses the latest Splink model trained with the current conf/splink.yaml, and trains one only when
none exists (with nothing admitted, it trains none, and stages no pairs and no records, so every published
profile is retired). The whole stage runs on one engine (conf/pipeline.yaml `resolve`,
jobs.linkage.choose_engine): Spark, or DuckDB inside the driver, which reads the admitted records from Delta
and hands its results to delta-rs as Arrow, with no Spark job.
Only admitted records (see jobs.consent) are resolved.
Stages, under staging/ beside unify's gold candidates, what the quality gate publishes with them (all or
none, so a failed gate leaves these tables as they were too):
- gold/pairwise_matches: both record ids, match weight and probability, and each comparison's
  level (gamma_*) to explain the match;
- gold/record_profiles: record -> profile_id;
- gold/profile_registry: every profile id ever issued, active or merged/retired, and its successor;
- audit/identity_events: this run's profiles created, merged, split, moved records and retired, with the run id.
Profile ids follow the published record_profiles and registry: the last run that passed the gate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import pyarrow as pa
from pyspark.sql import SparkSession

from jobs import delta_io
from jobs.canonical import SUBJECT
from jobs.config import PipelineConfig
from jobs.engines import SqlEngine, open_engine, sql_string
from jobs.linkage import ModelVersion, latest_model, linkage_records, pick_engine, prediction_linker
from jobs.profile_ids import ASSIGNMENTS_SCHEMA, REGISTRY_SCHEMA, assign_stable_profile_ids, with_event_ids
from jobs.publication import finish_interrupted_publication
from jobs.runner import run_job
from jobs.spark_session import run_at_once, size_stage_to_input
from jobs.train import train_and_save

log = logging.getLogger("idres.resolve")

RECORD_PROFILES_COLUMNS = ("record_id", "profile_id", *SUBJECT)  # as resolve writes gold/record_profiles
PAIRS_SCHEMA = pa.schema(
    [
        ("record_id_l", pa.string()),
        ("record_id_r", pa.string()),
        ("match_weight", pa.float64()),
        ("match_probability", pa.float64()),
        ("model_version", pa.string()),
    ]
)


@dataclass
class ResolveResult:
    run_id: str
    model_version: str | None  # None: nothing admitted and no model yet, so none was trained
    engine: str
    records: int = 0
    pairs: int = 0
    profiles: int = 0
    events: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # Splink's predict and cluster steps, for benchmarks


def predict_and_cluster(
    db: SqlEngine,
    cfg: PipelineConfig,
    records: str,
    model: ModelVersion,
    seconds: dict[str, float] | None = None,
) -> tuple[str, str]:
    """On the engine db, over its table of linkage records: Splink's predictions above the match probability
    (pairs: both ids, weight, probability, gamma_* levels, model version) and clusters (record_id,
    cluster_key) at the cluster probability (conf/splink.yaml thresholds); returns both tables.

    When `seconds` is given, the wall time of Splink's predict and cluster steps goes into it (both
    engines materialize their output in these calls).
    """
    linkage = cfg.linkage
    linker = prediction_linker(db, records, model, linkage, cfg.policy)
    started = time.perf_counter()
    predictions = linker.inference.predict(threshold_match_probability=linkage.match_probability)
    predicted = time.perf_counter()
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
        predictions, threshold_match_probability=linkage.cluster_probability
    )
    if seconds is not None:
        seconds.update(predict=predicted - started, cluster=time.perf_counter() - predicted)
    gammas = sorted(c for c in db.columns(predictions.physical_name) if c.startswith("gamma_"))
    pairs = db.create(
        "pairs",
        f"""SELECT record_id_l, record_id_r, match_weight, match_probability, {"".join(g + ", " for g in gammas)}
            {sql_string(model.version)} AS model_version
        FROM {predictions.physical_name}""",
    )
    clustered = db.create(
        "clusters", f"SELECT record_id, CAST(cluster_id AS VARCHAR) AS cluster_key FROM {clusters.physical_name}"
    )
    return pairs, clustered


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> ResolveResult:
    """Resolve the admitted records into profiles with stable ids."""
    finish_interrupted_publication(cfg)  # ids follow the published tables, whole
    t = cfg.tables
    delta_io.require_table(t.admitted, "consent_gate")
    now = delta_io.run_time(datetime.now(UTC), [(t.identity_events, "event_at"), (t.profile_registry, "created_at")])
    count = delta_io.row_count(t.admitted)
    size_stage_to_input(spark, cfg.spark, count)
    with open_engine(spark, pick_engine(spark, cfg.resolve, count)) as db:
        records = linkage_records(db, cfg)
        model = latest_model(cfg.models, cfg.linkage, cfg.policy)
        if model is None and count > 1:
            model = train_and_save(db, cfg, records)
        result = ResolveResult(run_id, model.version if model else None, db.name, records=count)
        if model is not None and count:
            pairs, clusters = predict_and_cluster(db, cfg, records, model, result.seconds)
        else:  # no record, or one and no model to score it with: each record is a profile of its own
            pairs = db.register("pairs", PAIRS_SCHEMA.empty_table())
            clusters = db.create("clusters", f"SELECT record_id, record_id AS cluster_key FROM {records}")
        published = db.read_delta("published_record_profiles", t.record_profiles, ASSIGNMENTS_SCHEMA)
        previous = db.create("previous", f"SELECT record_id, profile_id FROM {published}")
        registry = db.create(
            "registry", f"SELECT * FROM {db.read_delta('published_registry', t.profile_registry, REGISTRY_SCHEMA)}"
        )

        ids = assign_stable_profile_ids(db, clusters, previous, registry, run_id, now)
        record_profiles = db.create(
            "record_profiles",
            f"""SELECT a.record_id, a.profile_id, r.source_system,
                substring(a.record_id, length(r.source_system) + 2) AS source_record_id
            FROM {ids.assignments} a JOIN {records} r ON a.record_id = r.record_id""",
        )
        events = with_event_ids(db, ids.events, now)

        staged = {
            t.staged(name): db.write_source(table)
            for name, table in (
                ("pairwise_matches", pairs),
                ("record_profiles", record_profiles),
                ("profile_registry", ids.registry),
                ("identity_events", events),
            )
        }
        # Four tables at once: delta-rs (and Spark) leave the GIL while they write.
        overwrite = partial(delta_io.overwrite_delta, run_id=run_id, job="resolve")
        run_at_once(spark, [partial(overwrite, rows, path) for path, rows in staged.items()])

        result.pairs = db.count(pairs)
        result.profiles = db.rows(f"SELECT count(DISTINCT profile_id) AS n FROM {record_profiles}")[0]["n"]
        tallies = db.rows(f"SELECT event_type, count(DISTINCT profile_id) AS n FROM {events} GROUP BY event_type")
        result.events = {r["event_type"]: r["n"] for r in tallies}
    log.info(
        "resolve (model %s on %s): %d records, %d pairs, %d profiles, events %s",
        result.model_version,
        result.engine,
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
