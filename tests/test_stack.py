from __future__ import annotations

import re
from pathlib import Path

import pyspark
from pyspark.sql.types import DoubleType

from jobs.config import SparkConfig
from jobs.spark_session import size_stage_to_input


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
    planning = ("spark.sql.adaptive.enabled", "spark.sql.codegen.wholeStage")
    try:
        sized = {}
        for rows in (0, 9_897, 50_000, 50_001, 350_000, 10_000_000):
            partitions = size_stage_to_input(spark, settings, rows)
            sized[rows] = (partitions, *(spark.conf.get(key) for key in planning))
        assert sized == {  # local[2]: two cores
            0: (2, "false", "false"),
            9_897: (2, "false", "false"),
            50_000: (2, "false", "false"),
            50_001: (2, "true", "true"),
            350_000: (4, "true", "true"),
            10_000_000: (8, "true", "true"),
        }
        assert spark.conf.get("spark.sql.shuffle.partitions") == "8"
        assert size_stage_to_input(spark, SparkConfig(shuffle_partitions=1), 10_000_000) == 1
        size_stage_to_input(spark, SparkConfig(small_input_rows=0), 1)
        assert [spark.conf.get(key) for key in planning] == ["true", "true"]
        size_stage_to_input(spark, SparkConfig(conf={"spark.sql.adaptive.enabled": "false"}), 10_000_000)
        assert [spark.conf.get(key) for key in planning] == ["false", "true"]  # a configured choice holds
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "2")
        for key in planning:
            spark.conf.set(key, "true")
