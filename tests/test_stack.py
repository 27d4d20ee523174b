from __future__ import annotations

import re
from pathlib import Path

import pyspark
from pyspark.sql.types import DoubleType

from jobs.config import SparkConfig
from jobs.spark_session import size_shuffle_partitions


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


def test_a_stage_sizes_its_shuffle_partitions_to_its_rows_within_the_cores_and_the_ceiling(spark):
    settings = SparkConfig(shuffle_partitions=8, rows_per_shuffle_partition=100_000)
    try:
        sized = {rows: size_shuffle_partitions(spark, settings, rows) for rows in (0, 9_897, 350_000, 10_000_000)}
        assert sized == {0: 2, 9_897: 2, 350_000: 4, 10_000_000: 8}  # local[2]: two cores
        assert spark.conf.get("spark.sql.shuffle.partitions") == "8"
        assert size_shuffle_partitions(spark, SparkConfig(shuffle_partitions=1), 10_000_000) == 1
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "2")
