from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from functools import partial
from pathlib import Path

import pandas as pd
import pyspark
import pytest
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StringType

from jobs import delta_io, scratch
from jobs.config import SparkConfig
from jobs.python_daemon import SPARK_ARCHIVE, without_spark_archives
from jobs.spark_session import launch_settings_missed, mapped_class_archives, run_at_once, size_stage_to_input
from tests.conftest import DRIVER_CLASS_ARCHIVE


def test_pyspark_python_matches_the_installed_spark_jars(spark):
    jars = Path(pyspark.__file__).parent / "jars"
    core = [p.name for p in jars.glob("spark-core_*.jar")]
    assert len(core) == 1
    jar_version = re.match(r"spark-core_[\d.]+-(.+)\.jar", core[0]).group(1)
    assert pyspark.__version__ == jar_version == spark.version == "4.2.0"


def test_splinks_similarity_jar_is_on_the_driver_classpath(spark):
    spark.udf.registerJavaFunction("jaro_winkler_sim", "uk.gov.moj.dash.linkage.JaroWinklerSimilarity", DoubleType())
    row = spark.sql("SELECT round(jaro_winkler_sim('martha', 'marhta'), 4) AS s").first()
    assert row["s"] == 0.9611


def test_a_stage_sizes_its_shuffle_partitions_and_planning_to_its_rows_within_the_cores_and_the_ceiling(spark):
    settings = SparkConfig(shuffle_partitions=8, rows_per_shuffle_partition=100_000, small_input_rows=50_000)
    planning = (
        "spark.sql.adaptive.enabled",
        "spark.sql.codegen.wholeStage",
        "spark.sql.codegen.factoryMode",
        delta_io.COLLECT_WRITES_CONF,
    )
    try:
        sized = {}
        for rows in (0, 9_897, 50_000, 50_001, 350_000, 10_000_000):
            partitions = size_stage_to_input(spark, settings, rows)
            sized[rows] = (partitions, *(spark.conf.get(key) for key in planning))
        assert sized == {  # local[2]: two cores; small stages plan simply, compile nothing and collect their writes
            0: (2, "false", "false", "NO_CODEGEN", "true"),
            9_897: (2, "false", "false", "NO_CODEGEN", "true"),
            50_000: (2, "false", "false", "NO_CODEGEN", "true"),
            50_001: (2, "true", "true", "FALLBACK", "false"),
            350_000: (4, "true", "true", "FALLBACK", "false"),
            10_000_000: (8, "true", "true", "FALLBACK", "false"),
        }
        assert spark.conf.get("spark.sql.shuffle.partitions") == "8"
        assert size_stage_to_input(spark, SparkConfig(shuffle_partitions=1), 10_000_000) == 1
        size_stage_to_input(spark, SparkConfig(small_input_rows=0), 1)
        assert [spark.conf.get(key) for key in planning] == ["true", "true", "FALLBACK", "false"]
        size_stage_to_input(spark, SparkConfig(conf={"spark.sql.adaptive.enabled": "false"}), 10_000_000)
        # a configured choice holds
        assert [spark.conf.get(key) for key in planning] == ["false", "true", "FALLBACK", "false"]
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "2")
        for key in planning:
            spark.conf.unset(key)  # as the shared session starts


def test_python_workers_fork_from_the_project_daemon_without_sparks_archives_on_their_path(spark):
    @F.pandas_udf(StringType())
    def worker_state(ids: pd.Series) -> pd.Series:
        import pyspark as worker_pyspark  # the worker's own import; sys and json resolve in the worker too

        state = {
            "daemon": sys.modules["__main__"].__spec__.name,
            "pyspark": worker_pyspark.__file__,
            "archives": [p for p in [*sys.path, *sys.path_importer_cache] if SPARK_ARCHIVE.search(str(p))],
        }
        return pd.Series([json.dumps(state)] * len(ids))

    states = {row[0] for row in spark.range(4).repartition(2).select(worker_state("id")).collect()}
    # Spark puts its archives first on every worker's path; the daemon dropped them and their importers.
    assert [json.loads(s) for s in states] == [
        {"daemon": "jobs.python_daemon", "pyspark": pyspark.__file__, "archives": []}
    ]


def test_spark_archives_leave_the_path_only_when_pyspark_and_py4j_import_without_them():
    installed = Path(pyspark.__file__).parent
    site_packages = str(installed.parent)
    archives = [str(p) for p in [*installed.glob("python/lib/*.zip"), *installed.glob("jars/spark-core_*.jar")]]
    assert len(archives) == 3, archives  # pyspark.zip, py4j-<version>-src.zip, spark-core_<versions>.jar
    assert without_spark_archives([*archives, "/opt/app", site_packages]) == ["/opt/app", site_packages]
    # An interpreter without pyspark installed imports it from the archives: they stay.
    assert without_spark_archives([*archives, "/opt/app"]) == [*archives, "/opt/app"]


def test_sparks_local_dir_is_a_scratch_folder_of_this_process(spark):
    """Shuffle, spill and disk-cached blocks (copies of records) go where a killed job's are removed by the next
    (a local dir configured elsewhere wins: checked by hand, README)."""
    block_manager = spark.sparkContext._jvm.org.apache.spark.SparkEnv.get().blockManager()
    (local_dir,) = [Path(str(path)) for path in block_manager.diskBlockManager().localDirs()]
    assert re.fullmatch(rf"{scratch.PREFIX}spark-{os.getpid()}-\w+", local_dir.parent.name)
    assert local_dir.parent.parent == Path(tempfile.gettempdir())
    # the JVM's temp dir, given to the JVM's launch only
    assert spark.sparkContext._jvm.java.lang.System.getProperty("java.io.tmpdir") == str(local_dir.parent)
    assert "java.io.tmpdir" not in os.environ.get("SPARK_SUBMIT_OPTS", "")


def test_the_driver_jvm_maps_the_class_archive_make_install_built(spark):
    assert DRIVER_CLASS_ARCHIVE.is_file()
    # SPARK_SUBMIT_OPTS (exported by the Makefile) reaches the JVM that PySpark starts through spark-submit
    assert mapped_class_archives(spark) == [str(DRIVER_CLASS_ARCHIVE)]


def test_a_driver_launched_without_spark_submit_jsons_settings_is_named():
    """spark-submit by hand without --driver-memory and the JVM options runs on Spark's 1g heap and G1, unsaid."""
    conf = {"spark.driver.memory": "4g", "spark.driver.extraJavaOptions": "-XX:+UseParallelGC -Dx=1"}
    as_pyspark_launches = ["-Djava.io.tmpdir=/tmp/t", "-Xmx4g", "-XX:+UseParallelGC", "-Dx=1", "--add-modules=m"]
    assert launch_settings_missed(conf, as_pyspark_launches) == []
    by_hand = ["-Xmx1g", "--add-modules=m"]
    assert launch_settings_missed(conf, by_hand) == ["spark.driver.memory", "spark.driver.extraJavaOptions"]
    assert launch_settings_missed({}, by_hand) == []


def test_steps_run_at_once_in_the_callers_job_group_and_an_error_waits_for_the_others(spark):
    sc = spark.sparkContext
    sc.setJobGroup("idres-test-group", "run_at_once")
    ended = []

    def group_of_step(step: int) -> str:
        spark.range(1).count()  # a Spark job from the worker thread
        ended.append(step)
        return f"{step}:{sc.getLocalProperty('spark.jobGroup.id')}"

    def failing() -> None:
        raise ValueError("step failed")

    try:
        assert run_at_once(spark, [partial(group_of_step, 1), partial(group_of_step, 2)]) == [
            "1:idres-test-group",
            "2:idres-test-group",
        ]
        with pytest.raises(ValueError, match="step failed"):
            run_at_once(spark, [failing, partial(group_of_step, 3)], workers=2)
        assert 3 in ended
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
