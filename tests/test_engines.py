"""Splink on Spark and on DuckDB (inside the driver) resolve the demo into the same profiles.

One model serves both engines, and a model trained with other settings is never reused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs import consent, delta_io, resolve, train
from jobs.canonical import LINKAGE_DERIVATION_VERSION
from jobs.config import LinkageConfig, PipelineConfig, ResolveConfig
from jobs.engines import ENGINES, open_engine, sql_string
from jobs.errors import IdresError, ModelError
from jobs.linkage import choose_engine, latest_model, model_settings, settings_hash


def test_auto_picks_duckdb_only_for_few_records_on_a_local_master():
    auto = ResolveConfig(engine="auto", duckdb_max_records=1000)
    masters = ("local", "local[*]", "local[4]", "local[4, 2]", "spark://10.0.0.1:7077", "yarn", "k8s://https://k8s:443")
    picked = {(master, n): choose_engine(auto, master, n).engine for master in masters for n in (1000, 1001)}
    assert (
        picked
        == {
            ("local", 1000): "duckdb",
            ("local", 1001): "spark",
            ("local[*]", 1000): "duckdb",
            ("local[*]", 1001): "spark",
            ("local[4]", 1000): "duckdb",
            ("local[4]", 1001): "spark",
            ("local[4, 2]", 1000): "duckdb",  # with task retries, spaces around the comma as Spark allows
            ("local[4, 2]", 1001): "spark",
            **{(cluster, n): "spark" for cluster in masters[4:] for n in (1000, 1001)},
        }
    )
    assert choose_engine(auto, "local[2]", 490).reason == "auto: 490 records <= duckdb_max_records 1000 on local[2]"
    assert choose_engine(auto, "yarn", 5).reason == "auto: Spark master yarn is a cluster"
    assert choose_engine(ResolveConfig(engine="duckdb"), "yarn", 10**9).engine == "duckdb"
    assert choose_engine(ResolveConfig(engine="spark"), "local", 1).engine == "spark"


def resolve_on(
    spark,
    trained: PipelineConfig,
    root: Path,
    engine: str,
    models: Path | None = None,
    linkage: LinkageConfig | None = None,
) -> tuple[PipelineConfig, resolve.ResolveResult]:
    """resolve.run on a copy of the demo's admitted records, with the engine (and models, settings) given."""
    cfg = trained.with_paths(lakehouse=root / "lake", reports=root / "reports")
    shutil.copytree(trained.tables.admitted, cfg.tables.admitted)
    cfg = dataclasses.replace(
        cfg,
        models=models or trained.models,
        resolve=ResolveConfig(engine=engine),
        linkage=linkage or trained.linkage,
    )
    return cfg, resolve.run(spark, cfg, run_id=f"engines-{engine}")


@pytest.fixture(scope="module")
def spark_run(spark, trained, tmp_path_factory) -> tuple[PipelineConfig, resolve.ResolveResult, dict[str, int]]:
    """The demo resolved on Spark with the Spark-trained model, in a job group of its own, and how many Spark
    jobs it started in that group and outside any group."""
    tracker = spark.sparkContext.statusTracker()
    ungrouped = set(tracker.getJobIdsForGroup(None))
    spark.sparkContext.setJobGroup("engines-spark", "resolve on Spark")
    try:
        cfg, result = resolve_on(spark, trained, tmp_path_factory.mktemp("engines-spark"), "spark")
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    jobs = {
        "grouped": len(tracker.getJobIdsForGroup("engines-spark")),
        "ungrouped": len(set(tracker.getJobIdsForGroup(None)) - ungrouped),
    }
    return cfg, result, jobs


@pytest.fixture(scope="module")
def runs(spark, trained, spark_run, tmp_path_factory) -> dict[str, tuple[PipelineConfig, resolve.ResolveResult]]:
    """The demo resolved with the Spark-trained model on Spark and under the shipped `auto`, and with a
    model trained on DuckDB (same records, same seed) on DuckDB."""
    root = tmp_path_factory.mktemp("engines")
    return {
        "spark": spark_run[:2],
        "auto": resolve_on(spark, trained, root / "auto", trained.resolve.engine),
        "duckdb_trained": resolve_on(spark, trained, root / "duckdb", "duckdb", models=root / "duckdb-models"),
    }


def partition(spark, cfg: PipelineConfig) -> DataFrame:
    """Each record with the smallest record id of its profile: the partition, whatever the profile ids."""
    profiles = delta_io.read_delta(spark, cfg.tables.staged("record_profiles"))  # as resolve staged it
    return profiles.select("record_id", F.min("record_id").over(Window.partitionBy("profile_id")).alias("cluster"))


def pairs(spark, cfg: PipelineConfig) -> DataFrame:
    return delta_io.read_delta(spark, cfg.tables.staged("pairwise_matches")).drop("model_version")


def test_both_engines_resolve_the_demo_into_the_same_profiles(spark, runs):
    assert {name: result.engine for name, (_, result) in runs.items()} == {
        "spark": "spark",
        "auto": "duckdb",  # 400 people's records on local[2]
        "duckdb_trained": "duckdb",
    }
    on_spark = partition(spark, runs["spark"][0]).persist()
    records = on_spark.count()
    clusters = on_spark.select("cluster").distinct().count()
    assert 0 < clusters < records  # some records were joined, not all
    assert_df_equality(on_spark, partition(spark, runs["auto"][0]), ignore_row_order=True)
    assert_df_equality(on_spark, partition(spark, runs["duckdb_trained"][0]), ignore_row_order=True)

    # The same model on both engines: the same pairs, comparison levels and probabilities.
    assert_approx_df_equality(
        pairs(spark, runs["spark"][0]), pairs(spark, runs["auto"][0]), precision=1e-9, ignore_row_order=True
    )
    # Separately trained models: the same pairs and levels; probabilities differ a little (u is sampled).
    assert_approx_df_equality(
        pairs(spark, runs["spark"][0]).drop("match_weight"),
        pairs(spark, runs["duckdb_trained"][0]).drop("match_weight"),
        precision=0.01,
        ignore_row_order=True,
    )


def test_resolve_on_spark_starts_every_job_in_its_callers_job_group(spark_run):
    """The pipeline counts a stage's Spark jobs by its job group: the staged tables, written from threads,
    must not escape it."""
    _, result, jobs = spark_run
    assert result.engine == "spark"
    assert jobs["grouped"] > 0
    assert jobs["ungrouped"] == 0


def test_resolve_on_spark_leaves_no_splink_table_in_the_checkpoint_dir(spark, spark_run):
    """Splink on Spark writes its tables (records, scored pairs) as Parquet into the checkpoint dir; on a
    configured, lasting one they would outlive an erasure of the records they copy."""
    root = Path(spark.sparkContext.getCheckpointDir().removeprefix("file:"))
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("__splink__")) == []


def sql_of(settings: dict[str, Any]) -> list[Any]:
    comparisons = [
        (c["output_column_name"], [lv["sql_condition"] for lv in c["comparison_levels"]])
        for c in settings["comparisons"]
    ]
    return [comparisons, [b["blocking_rule"] for b in settings["blocking_rules_to_generate_predictions"]]]


def parameters_of(settings: dict[str, Any]) -> list[Any]:
    levels = [
        (lv.get("m_probability"), lv.get("u_probability"))
        for c in settings["comparisons"]
        for lv in c["comparison_levels"]
    ]
    return [settings["probability_two_random_records_match"], levels]


def test_one_model_serves_both_engines_and_only_with_its_settings(runs, trained):
    spark_model = latest_model(trained.models, trained.linkage, trained.policy)
    duckdb_model = latest_model(runs["duckdb_trained"][0].models, trained.linkage, trained.policy)
    assert (spark_model.engine, duckdb_model.engine) == ("spark", "duckdb")
    assert runs["duckdb_trained"][1].model_version == duckdb_model.version

    saved_spark = json.loads(spark_model.path.read_text(encoding="utf-8"))
    saved_duckdb = json.loads(duckdb_model.path.read_text(encoding="utf-8"))
    assert sql_of(saved_spark) != sql_of(saved_duckdb)  # the dialects differ
    as_spark = model_settings(duckdb_model, trained.linkage, trained.policy, "spark")
    assert sql_of(as_spark) == sql_of(saved_spark)
    assert parameters_of(as_spark) == parameters_of(saved_duckdb)
    assert model_settings(spark_model, trained.linkage, trained.policy, "spark") == saved_spark

    other_seed = dataclasses.replace(trained.linkage, seed=trained.linkage.seed + 1)
    assert latest_model(trained.models, other_seed, trained.policy) is None
    with pytest.raises(ModelError, match=rf"'{spark_model.version}': was trained with other settings"):
        model_settings(spark_model, other_seed, trained.policy, "duckdb")
    other_threshold = dataclasses.replace(trained.linkage, cluster_probability=0.95)
    assert latest_model(trained.models, other_threshold, trained.policy) == spark_model  # thresholds need no new model

    # A policy that lets silver hold a compared column the model never saw, or keeps one out that it learned
    # from: the model's weights for it are Splink's defaults, or evidence that is gone, so it is not reused.
    pseudonymized = dataclasses.replace(trained.policy, pseudonymized=("national_id",))
    assert "national_id_hash" in pseudonymized.silver_columns
    assert "national_id_hash" not in trained.policy.silver_columns
    no_birth_dates = dataclasses.replace(trained.policy, sensitive=(*trained.policy.sensitive, "date_of_birth"))
    # Emails held only for analytics: the gate nulls them for records without it, so the model saw few.
    purposes = trained.policy.attribute_purposes
    emails_for_analytics = dataclasses.replace(trained.policy, attribute_purposes={**purposes, "email": ("analytics",)})
    for policy in (pseudonymized, no_birth_dates, emails_for_analytics):
        assert latest_model(trained.models, trained.linkage, policy) is None
        with pytest.raises(ModelError, match="other policy columns"):
            model_settings(spark_model, trained.linkage, policy, "spark")
    no_gender = dataclasses.replace(trained.policy, sensitive=(*trained.policy.sensitive, "gender"))
    assert "gender" not in no_gender.silver_columns
    assert latest_model(trained.models, trained.linkage, no_gender) == spark_model  # gender is not compared
    gender_for_analytics = dataclasses.replace(
        trained.policy, attribute_purposes={**purposes, "gender": ("analytics",)}
    )
    assert latest_model(trained.models, trained.linkage, gender_for_analytics) == spark_model


def test_a_model_file_cut_short_is_passed_over_for_the_newest_whole_one(trained, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained.models, models)
    whole = latest_model(models, trained.linkage, trained.policy)
    newer = models / whole.path.name.replace(whole.version[:16], "20991231T000000Z")  # a crash cut it short
    newer.write_bytes(whole.path.read_bytes()[:100])
    assert latest_model(models, trained.linkage, trained.policy) == whole
    newer.write_bytes(whole.path.read_bytes())  # whole again: its content has the hash its name gives
    assert latest_model(models, trained.linkage, trained.policy).path == newer


def test_a_model_trained_before_the_compared_columns_were_derived_another_way_is_not_reused(trained, monkeypatch):
    current = latest_model(trained.models, trained.linkage, trained.policy)
    monkeypatch.setattr("jobs.linkage.LINKAGE_DERIVATION_VERSION", LINKAGE_DERIVATION_VERSION + 1)
    assert settings_hash(trained.linkage, trained.policy) != current.settings_hash
    assert latest_model(trained.models, trained.linkage, trained.policy) is None


def test_resolve_trains_a_new_model_when_none_has_the_current_settings(spark, trained, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained.models, models)
    spark_model = latest_model(models, trained.linkage, trained.policy)
    # the newest file, but named before settings were hashed: never used
    shutil.copy(spark_model.path, models / "splink-model-20991231T000000Z-0123456789ab.json")
    other_seed = dataclasses.replace(trained.linkage, seed=trained.linkage.seed + 1)
    assert latest_model(models, other_seed, trained.policy) is None

    _, result = resolve_on(spark, trained, tmp_path, "duckdb", models=models, linkage=other_seed)
    retrained = latest_model(models, other_seed, trained.policy)
    assert result.model_version == retrained.version != spark_model.version
    assert (retrained.engine, retrained.settings_hash) == ("duckdb", settings_hash(other_seed, trained.policy))
    assert latest_model(models, trained.linkage, trained.policy) == dataclasses.replace(
        spark_model, path=models / spark_model.path.name
    )


def test_no_model_is_trained_on_records_the_consent_gate_admitted_under_another_policy(spark, trained, tmp_path):
    """conf/policy.yaml now pseudonymizes national ids for matching, and the model is retrained before a consent
    gate ran under it: the admitted records hold no national_id_hash, so a model keyed to the new policy would
    have learned nothing of them and be reused as if it had."""
    pseudonymized = dataclasses.replace(trained.policy, pseudonymized=("national_id",))
    assert "national_id_hash" in pseudonymized.silver_columns
    cfg = dataclasses.replace(
        trained.with_paths(reports=tmp_path / "reports"), policy=pseudonymized, models=tmp_path / "models"
    )
    with pytest.raises(IdresError, match=r"gated under another purpose policy.*run the consent gate first"):
        train.run(spark, cfg, run_id="retrain-after-policy-change")
    assert latest_model(cfg.models, cfg.linkage, cfg.policy) is None
    assert consent.gating_policy(trained) == trained.policy.fingerprint != pseudonymized.fingerprint


def test_splink_on_spark_scores_jaro_winkler_as_duckdb_does(spark):
    # Odd numbers of half-transpositions (arina/iarina: 3) are where Splink's Spark jar and DuckDB disagreed; the
    # expected scores come from DuckDB itself, as the Spark engine's scores must, to the bit.
    import duckdb

    pairs = [("arina", "iarina"), ("carcenko", "harcenko"), ("martha", "marhta"), ("dixon", "dicksonx"), ("ab", "ba")]
    pairs += [("anna", None), ("", "")]
    # Exactly 0.92 in DuckDB, a level's threshold, and 0.9199999999999999 in another implementation (jellyfish).
    pairs += [("constantin", "csonstfantin"), ("bezborodko", "bbezborodkoh"), ("annkathrin", "aannkathrinf")]
    with open_engine(spark, "spark") as db:
        assert db.splink_api is not None  # Splink's Spark API, with its jar's UDFs and our jaro_winkler
    left = spark.createDataFrame(pairs, "a string, b string").selectExpr("a", "b", "jaro_winkler(a, b) AS score")
    expected = duckdb.execute(
        "SELECT a, b, jaro_winkler_similarity(a, b) AS score FROM (SELECT unnest($a) AS a, unnest($b) AS b)",
        {"a": [a for a, _ in pairs], "b": [b for _, b in pairs]},
    ).fetchall()
    assert_df_equality(left, spark.createDataFrame(expected, left.schema), ignore_row_order=True)  # to the bit


def test_a_duckdb_linker_database_and_its_spill_folder_are_gone_when_its_block_ends(spark):
    # Splink holds the database in reference cycles; without the close it outlives the stage that used it.
    import duckdb

    from jobs.linkage import linker_for

    records = spark.createDataFrame([("r1", "x")], "record_id string, first_name string")
    settings = {"link_type": "dedupe_only", "unique_id_column_name": "record_id"}
    with open_engine(spark, "duckdb") as db:
        linker = linker_for(db, db.register("records", records), settings)
        connection = linker._db_api.duckdb_con
        assert connection.execute("SELECT count(*) FROM idres_records").fetchone() == (1,)
        # what it spills beyond its memory goes to a folder of its own, not `.tmp` where the job runs
        (spill_dir,) = connection.execute("SELECT current_setting('temp_directory')").fetchone()
        assert Path(spill_dir).name.startswith("idres-duckdb-") and Path(spill_dir).is_dir()
    with pytest.raises(duckdb.ConnectionException):
        connection.execute("SELECT 1")
    assert not Path(spill_dir).exists()


def test_a_date_of_birth_silver_does_not_hold_is_a_typed_null_the_duckdb_comparison_reads_as_no_evidence(spark, cfg):
    from jobs.linkage import linkage_columns, linker_for, splink_settings

    # A policy that keeps dates of birth out of silver: the admitted records have no such column.
    admitted = spark.createDataFrame(
        [("ua_crm", "UA-1", "olena", "shevchenko"), ("ro_shop", "R-1", "olena", "shevchenko")],
        "source_system string, source_record_id string, first_name_key string, last_name_key string",
    )
    columns = linkage_columns(admitted.columns, cfg.linkage)
    with open_engine(spark, "duckdb") as db:
        records = db.create("linkage_records", f"SELECT {', '.join(columns)} FROM {db.register('admitted', admitted)}")
        pairs = linker_for(db, records, splink_settings(cfg.linkage)).inference.predict().as_pandas_dataframe()
    assert [(r.record_id_l, r.record_id_r, r.gamma_date_of_birth) for r in pairs.itertuples()] == [
        ("ro_shop:R-1", "ua_crm:UA-1", -1)
    ]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_quoted_value_is_data_on_both_engines_even_a_spark_variable(spark, engine):
    """Spark substitutes ${...} inside SQL string literals unless told not to: a run id holding one gave other
    profile ids on Spark than on DuckDB."""
    run_id = "nightly-${spark.app.name}-'quoted'"
    with open_engine(spark, engine) as db:
        assert db.rows(f"SELECT {sql_string(run_id)} AS v") == [{"v": run_id}]
