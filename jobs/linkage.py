"""Splink for this project: settings from conf/splink.yaml, training, versioned models, charts, engines.

Shared by the training job and the resolve job (and the accuracy benchmark), so that every one
of them builds the same Splink model from the same configuration.

Splink runs on one of two engines (jobs.engines): Spark, distributed, or DuckDB inside the Spark driver,
reading the admitted records from Delta as Arrow. Here are the engine choice (`choose_engine`), Splink's
input on either (`linkage_records`), a linker over it (`linker_for`) and a saved model's settings in
another engine's SQL dialect (`model_settings`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from splink import Linker, SettingsCreator, block_on

from jobs import delta_io
from jobs.canonical import (
    CANONICAL_FIELDS,
    LINKAGE_COLUMNS,
    LINKAGE_DERIVATION_VERSION,
    RECORD_ID_SEPARATOR,
    SILVER_ATTRIBUTES,
)
from jobs.config import LinkageConfig, PipelineConfig, PurposePolicy, ResolveConfig, splink_comparison
from jobs.engines import ENGINES, SqlEngine
from jobs.errors import ModelError
from jobs.files import replace_durably

log = logging.getLogger("idres.linkage")

MODEL_PREFIX = "splink-model-"
# "<UTC time>-<engine trained on>-<settings hash>-<content hash>"; names sort by time.
MODEL_VERSION = re.compile(
    r"(?P<stamp>\d{8}T\d{6}Z)-(?P<engine>[a-z]+)-(?P<settings>[0-9a-f]{12})-(?P<content>[0-9a-f]{12})"
)
# local, local[N], local[*], local[N,retries] (Spark allows spaces around the comma)
LOCAL_MASTER = re.compile(r"local(\[(\*|\d+)(\s*,\s*\d+)?\])?")
# Thresholds only cut predictions and clusters; a change to them needs no new model.
NOT_MODEL_SETTINGS = ("match_probability", "cluster_probability", "max_block_records")


@dataclass(frozen=True)
class ModelVersion:
    path: Path
    version: str  # "<UTC timestamp>-<engine>-<settings hash>-<first 12 hex of the JSON's SHA-256>"
    engine: str  # the engine it was trained on, whose SQL dialect its JSON is written in
    settings_hash: str  # settings_hash() of the conf/splink.yaml and policy columns it was trained with


@dataclass(frozen=True)
class EngineChoice:
    engine: str
    reason: str  # counts and settings only, never a data value


def _blocking_rule(rule: tuple[str, ...] | str) -> Any:
    return rule if isinstance(rule, str) else block_on(*rule)


def splink_settings(linkage: LinkageConfig) -> SettingsCreator:
    """The Splink settings described by conf/splink.yaml."""
    return SettingsCreator(
        link_type=linkage.link_type,
        unique_id_column_name=linkage.unique_id_column,
        comparisons=[splink_comparison(c) for c in linkage.comparisons],
        blocking_rules_to_generate_predictions=[_blocking_rule(r) for r in linkage.blocking_rules],
        retain_matching_columns=True,  # needed for the gamma_* levels; resolve writes no *_l/*_r values
        retain_intermediate_calculation_columns=False,
        additional_columns_to_retain=[],
    )


def linkage_columns(available: Sequence[str], linkage: LinkageConfig) -> list[str]:
    """Admitted records as Splink sees them, as SQL select expressions (Spark's and DuckDB's alike): a record
    id and the compared columns only.

    A column silver does not hold under the policy (a pseudonym not enabled, a date of birth the policy
    keeps out) is a null of the column's type, so its comparison's SQL still binds on both engines (DuckDB has
    no epoch of a string), says nothing, and its blocking rule pairs nothing.
    """
    record_id = f"concat_ws('{RECORD_ID_SEPARATOR}', source_system, source_record_id) AS {linkage.unique_id_column}"
    return [record_id, *(c if c in available else f"CAST(NULL AS {_sql_type(c)}) AS {c}" for c in LINKAGE_COLUMNS)]


def _sql_type(column: str) -> str:
    """The SQL type (Spark's and DuckDB's alike) of a linkage column: its canonical type, else a string."""
    return CANONICAL_FIELDS.get(column, T.StringType()).simpleString().upper()


def linkage_input(admitted: DataFrame, linkage: LinkageConfig) -> DataFrame:
    """linkage_columns of a Spark DataFrame of admitted records."""
    return admitted.selectExpr(*linkage_columns(admitted.columns, linkage))


def linkage_records(db: SqlEngine, cfg: PipelineConfig) -> str:
    """The admitted records (silver/admitted_customers) as Splink's input table on the engine db."""
    admitted = db.read_delta("admitted", cfg.tables.admitted)
    columns = linkage_columns(delta_io.column_names(cfg.tables.admitted), cfg.linkage)
    return db.create("linkage_records", f"SELECT {', '.join(columns)} FROM {admitted}")


def block_kept_column(rule: int) -> str:
    """The linkage records' column that says whether a record's block under prediction rule `rule` (its index in
    conf/splink.yaml) is small enough to pair (cap_oversized_blocks)."""
    return f"idres_block_{rule}_kept"


def cap_oversized_blocks(db: SqlEngine, records: str, linkage: LinkageConfig) -> tuple[str, list[int]]:
    """The linkage records with a block_kept_column for each prediction rule given as columns that has a block of
    more than max_block_records records, and those rules' indexes (none, and the records as they are, when no
    block is that large).

    Such a block makes pairs as the square of its size (a placeholder birth date on 60,000 records: 1.8 billion),
    enough to exhaust memory or never end; capped_prediction_rules keeps the rule from pairing its records, and
    the other rules still pair them."""
    cap = linkage.max_block_records
    keyed = {i: rule for i, rule in enumerate(linkage.blocking_rules) if isinstance(rule, tuple)}
    if not cap or not keyed or db.count(records) <= cap:  # no block can be larger than all the records
        return records, []
    per_rule = " UNION ALL ".join(
        f"""SELECT {i} AS rule FROM {records} WHERE {" AND ".join(f"({c}) IS NOT NULL" for c in columns)}
        GROUP BY {", ".join(columns)} HAVING count(*) > {cap}"""
        for i, columns in keyed.items()
    )
    oversized = sorted(int(r["rule"]) for r in db.rows(f"SELECT DISTINCT rule FROM ({per_rule}) AS blocks"))
    if not oversized:
        return records, []
    log.warning(
        "prediction rules %s (conf/splink.yaml, from 0) have blocks of more than %d records: those rules pair none "
        "of their records (thresholds.max_block_records); the other rules still do",
        oversized,
        cap,
    )
    kept = ", ".join(
        f"count(*) OVER (PARTITION BY {', '.join(keyed[i])}) <= {cap} AS {block_kept_column(i)}" for i in oversized
    )
    return db.create("linkage_records_capped", f"SELECT *, {kept} FROM {records}"), oversized


def capped_prediction_rules(settings: dict[str, Any], oversized: Sequence[int]) -> dict[str, Any]:
    """A model's settings whose prediction rules `oversized` pair only records of blocks small enough
    (cap_oversized_blocks); the records of one block share its values, so one side's column says it."""
    rules = [dict(r) for r in settings["blocking_rules_to_generate_predictions"]]
    for i in oversized:
        rules[i]["blocking_rule"] = f"({rules[i]['blocking_rule']}) AND l.{block_kept_column(i)}"
    return {**settings, "blocking_rules_to_generate_predictions": rules}


def prediction_linker(
    db: SqlEngine, records: str, model: ModelVersion, linkage: LinkageConfig, policy: PurposePolicy
) -> Linker:
    """A linker on the engine db that predicts over its table `records` with the saved model, each prediction rule
    pairing no records of a block over thresholds.max_block_records (cap_oversized_blocks)."""
    records, oversized = cap_oversized_blocks(db, records, linkage)
    settings = capped_prediction_rules(model_settings(model, linkage, policy, db.name), oversized)
    return linker_for(db, records, settings, validate=False)


def train(linker: Linker, linkage: LinkageConfig) -> None:
    """Estimate lambda (deterministic rules), u (random sampling) and m (EM on each training rule, on at most
    em_max_pairs of its blocked pairs: Splink picks them by a hash of the record ids, so the same records give
    the same sample)."""
    linker.training.estimate_probability_two_random_records_match(
        [_blocking_rule(r) for r in linkage.deterministic_rules], recall=linkage.recall
    )
    # One chunk: on Spark every chunk is a round of small jobs, and the sample is the same size.
    linker.training.estimate_u_using_random_sampling(max_pairs=linkage.u_max_pairs, seed=linkage.seed, num_chunks=1)
    for rule in linkage.em_blocking_rules:
        linker.training.estimate_parameters_using_expectation_maximisation(
            _blocking_rule(rule), max_pairs=linkage.em_max_pairs or None
        )


def settings_hash(linkage: LinkageConfig, policy: PurposePolicy) -> str:
    """12 hex of the SHA-256 of what shapes a model: conf/splink.yaml's settings as loaded (all but the thresholds)
    and the compared columns the policy lets silver hold (the others are nulls a model learns nothing of, so a
    policy that starts holding one, a pseudonym or a date of birth, needs a new model), with the purposes that
    let an admitted record keep each (the gate nulls it for records without one: a model trained while emails
    needed another purpose saw few of them), and the version of the code that derives the compared columns
    (LINKAGE_DERIVATION_VERSION)."""
    shaping = {k: v for k, v in dataclasses.asdict(linkage).items() if k not in NOT_MODEL_SETTINGS}
    shaping["derivation_version"] = LINKAGE_DERIVATION_VERSION
    shaping["held_columns"] = [c for c in LINKAGE_COLUMNS if c in policy.silver_columns]
    shaping["held_purposes"] = {
        attribute: sorted(purposes)
        for attribute, purposes in policy.attribute_purposes.items()
        if set(SILVER_ATTRIBUTES[attribute][1]) & set(shaping["held_columns"])
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=list).encode("utf-8")).hexdigest()[:12]


def _model_version(path: Path) -> ModelVersion | None:
    match = MODEL_VERSION.fullmatch(path.stem.removeprefix(MODEL_PREFIX))
    if match is None or match["engine"] not in ENGINES:
        return None
    return ModelVersion(path=path, version=match[0], engine=match["engine"], settings_hash=match["settings"])


def save_model(
    linker: Linker,
    linkage: LinkageConfig,
    policy: PurposePolicy,
    engine: str,
    models_dir: Path,
    now: datetime | None = None,
) -> ModelVersion:
    """Write the trained model as JSON named by UTC time, engine, settings hash and content hash; return it."""
    models_dir.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    draft = models_dir / f".draft-{stamp}.json"
    linker.misc.save_model_to_json(str(draft), overwrite=True)
    digest = _content_hash(draft)
    path = models_dir / f"{MODEL_PREFIX}{stamp}-{engine}-{settings_hash(linkage, policy)}-{digest}.json"
    return _model_version(replace_durably(draft, path))  # on disk before its name says it is whole


def _content_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def latest_model(models_dir: Path, linkage: LinkageConfig, policy: PurposePolicy) -> ModelVersion | None:
    """The newest saved model trained with these settings under this policy's columns, on any engine, or None.

    Models trained with other settings (or named before settings were hashed) are ignored, so a change to
    conf/splink.yaml, or to the compared columns policy.yaml lets silver hold, leads to a new training rather
    than a stale model. A file whose content no longer has the hash its name gives (cut short by a crash,
    edited by hand) is passed over, named in the log.
    """
    wanted = settings_hash(linkage, policy)
    paths = sorted(models_dir.glob(f"{MODEL_PREFIX}*.json")) if models_dir.is_dir() else []
    models = [m for m in map(_model_version, paths) if m is not None and m.settings_hash == wanted]
    for model in reversed(models):
        if _content_hash(model.path) == MODEL_VERSION.fullmatch(model.version)["content"]:
            return model
        log.warning("model %s is passed over: its content does not have the hash its name gives", model.path.name)
    return None


def model_settings(model: ModelVersion, linkage: LinkageConfig, policy: PurposePolicy, engine: str) -> dict[str, Any]:
    """The saved model as the settings dict a Linker on `engine` takes.

    Splink writes a model's SQL in its training engine's dialect (function names, quoting, casts,
    date arithmetic), but the trained parameters (lambda, each level's m and u) are plain numbers.
    For another engine the settings are rebuilt from conf/splink.yaml in that engine's dialect and
    the parameters copied over level by level, so one model serves both engines.
    """
    if model.settings_hash != settings_hash(linkage, policy):
        raise ModelError(
            model.version, "was trained with other settings than conf/splink.yaml holds, or other policy columns"
        )
    trained = json.loads(model.path.read_text(encoding="utf-8"))
    if model.engine == engine:
        return trained
    target = splink_settings(linkage).create_settings_dict(engine)
    target["probability_two_random_records_match"] = trained["probability_two_random_records_match"]
    if len(target["comparisons"]) != len(trained["comparisons"]):
        raise ModelError(model.version, "its comparisons differ from conf/splink.yaml's")
    for comparison, trained_comparison in zip(target["comparisons"], trained["comparisons"], strict=True):
        name, levels = comparison["output_column_name"], comparison["comparison_levels"]
        trained_levels = trained_comparison["comparison_levels"]
        if name != trained_comparison["output_column_name"] or [lv["label_for_charts"] for lv in levels] != [
            lv["label_for_charts"] for lv in trained_levels
        ]:
            raise ModelError(model.version, f"comparison '{name}' differs from conf/splink.yaml's")
        for level, trained_level in zip(levels, trained_levels, strict=True):
            for parameter in ("m_probability", "u_probability"):
                if parameter in trained_level:
                    level[parameter] = trained_level[parameter]
    return target


def choose_engine(resolve: ResolveConfig, master: str, records: int) -> EngineChoice:
    """The Splink engine for `records` admitted records on Spark master `master`, and why."""
    if resolve.engine != "auto":
        return EngineChoice(resolve.engine, f"resolve.engine is {resolve.engine}")
    if not LOCAL_MASTER.fullmatch(master):
        return EngineChoice("spark", f"auto: Spark master {master} is a cluster")
    if records > resolve.duckdb_max_records:
        return EngineChoice("spark", f"auto: {records} records > duckdb_max_records {resolve.duckdb_max_records}")
    return EngineChoice(
        "duckdb", f"auto: {records} records <= duckdb_max_records {resolve.duckdb_max_records} on {master}"
    )


def pick_engine(spark: SparkSession, resolve: ResolveConfig, records: int) -> str:
    """choose_engine for this session's master; logs the choice and the reason."""
    choice = choose_engine(resolve, spark.sparkContext.master, records)
    log.info("Splink engine %s (%s)", choice.engine, choice.reason)
    return choice.engine


def linker_for(
    db: SqlEngine, records: str, settings: SettingsCreator | dict[str, Any], *, validate: bool = True
) -> Linker:
    """A Splink linker on the engine db over its table `records` (linkage_records' columns).

    validate: Splink's settings check, which logs the settings' columns missing from `records`; a trained
    model's settings were checked against the same columns at training, so using it needs no second check.
    """
    return Linker(db.splink_api.register(records), settings, validate_settings=validate)


def save_model_charts(linker: Linker, report_dir: Path) -> list[Path]:
    """Splink's model charts as standalone HTML (Vega inlined, viewable offline): match weights,
    m and u parameters, unlinkables."""
    report_dir.mkdir(parents=True, exist_ok=True)
    charts = {
        "match_weights.html": linker.visualisations.match_weights_chart,
        "m_u_parameters.html": linker.visualisations.m_u_parameters_chart,
        "unlinkables.html": linker.evaluation.unlinkables_chart,
    }
    written = []
    for name, make in charts.items():
        path = report_dir / name
        make().save(str(path), inline=True)
        written.append(path)
    return written
