"""gold/pairwise_matches: Splink's scored pairs between admitted records."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expectations import QualityInputs, TableCheck, holds, must_hold, required_unique
from jobs.canonical import RECORD_ID_SEPARATOR, SUBJECT


def with_pair_checks(
    pairs: DataFrame, admitted: DataFrame, record_profiles: DataFrame, cluster_probability: float
) -> DataFrame:
    """Pairs with `distinct_records`, `records_admitted` (both ends are records the gate admitted),
    `clustered_together` (a pair at or above the cluster probability joins two records of one profile, as
    Splink's clustering at that threshold puts them in one cluster),
    `a_probability` (a match probability in [0, 1]: not null, not NaN, which a range expectation skips) and
    `a_weight` (a match weight, not null or NaN: GX's pandas engine counts NaN as null, its Spark engine not), and
    the pair's records in order, `record_id_lesser` and `record_id_greater`, on which (a, b) and (b, a) are one
    pair (null unless both are there)."""
    both = F.col("record_id_l").isNotNull() & F.col("record_id_r").isNotNull()
    ids = admitted.select(F.concat_ws(RECORD_ID_SEPARATOR, *SUBJECT).alias("_id"), F.lit(True).alias("_in"))
    profiles = record_profiles.select(F.col("record_id").alias("_id"), F.col("profile_id").alias("_profile"))
    clustered = holds(F.col("match_probability") >= cluster_probability)  # a null one fails a_probability
    return (
        pairs.join(ids.withColumnRenamed("_in", "_l"), F.col("record_id_l") == F.col("_id"), "left")
        .drop("_id")
        .join(ids.withColumnRenamed("_in", "_r"), F.col("record_id_r") == F.col("_id"), "left")
        .drop("_id")
        .join(profiles.withColumnRenamed("_profile", "_profile_l"), F.col("record_id_l") == F.col("_id"), "left")
        .drop("_id")
        .join(profiles.withColumnRenamed("_profile", "_profile_r"), F.col("record_id_r") == F.col("_id"), "left")
        .withColumn("distinct_records", holds(F.col("record_id_l") != F.col("record_id_r")))
        .withColumn("records_admitted", holds(F.col("_l") & F.col("_r")))
        .withColumn("a_probability", holds(~F.isnan("match_probability") & F.col("match_probability").between(0, 1)))
        .withColumn("a_weight", holds(F.col("match_weight").isNotNull() & ~F.isnan("match_weight")))
        .withColumn("clustered_together", holds(~clustered | (F.col("_profile_l") == F.col("_profile_r"))))
        .withColumn("record_id_lesser", F.when(both, F.least("record_id_l", "record_id_r")))
        .withColumn("record_id_greater", F.when(both, F.greatest("record_id_l", "record_id_r")))
        .drop("_id", "_l", "_r", "_profile_l", "_profile_r")
    )


def checks(inputs: QualityInputs) -> list[TableCheck]:
    return [
        TableCheck(
            suite="pairwise_matches",
            table="gold/pairwise_matches",
            frame=with_pair_checks(
                inputs.pairwise_matches,
                inputs.admitted,
                inputs.record_profiles,
                inputs.cfg.linkage.cluster_probability,
            ),
            expectations=[
                *required_unique("record_id_lesser", "record_id_greater", description="each pair scored once"),
                must_hold("a_probability", "a match probability, in [0, 1]"),
                must_hold("a_weight", "scored: a match weight, not NaN"),
                must_hold("distinct_records", "no record is paired with itself"),
                must_hold("records_admitted", "only records the consent gate admitted are compared"),
                must_hold("clustered_together", "a pair at or above the cluster probability is in one profile"),
            ],
        )
    ]
