from __future__ import annotations

import re
from pathlib import Path

import pyspark
from pyspark.sql.types import DoubleType


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
