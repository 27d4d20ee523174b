"""Splink for this project: settings from conf/splink.yaml, training, versioned models, charts.

Shared by the training job and the resolve job (and the accuracy benchmark), so that every one
of them builds the same Splink model from the same configuration.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import splink.comparison_level_library as cll
import splink.comparison_library as cl
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from splink import Linker, SettingsCreator, block_on

from jobs.config import LinkageConfig

log = logging.getLogger("idres.linkage")

# Silver columns the comparisons and blocking rules read; nothing else is handed to Splink.
LINKAGE_COLUMNS = (
    "source_system",
    "first_name",
    "first_name_key",
    "last_name",
    "last_name_key",
    "last_name_native",
    "last_name_phonetic",
    "date_of_birth",
    "email",
    "phone",
    "postcode",
    "city",
    "street",
    "national_id_hash",  # present only when the policy pseudonymizes national ids; null otherwise
)
MODEL_PREFIX = "splink-model-"


@dataclass(frozen=True)
class ModelVersion:
    path: Path
    version: str  # "<UTC timestamp>-<first 12 hex of the JSON's SHA-256>"


def _creator(module: Any, entry: dict[str, Any]) -> Any:
    made = getattr(module, entry["function"])(**entry.get("args", {}))
    return made.configure(**entry["configure"]) if entry.get("configure") else made


def _blocking_rule(rule: tuple[str, ...] | str) -> Any:
    return rule if isinstance(rule, str) else block_on(*rule)


def splink_settings(linkage: LinkageConfig) -> SettingsCreator:
    """The Splink settings described by conf/splink.yaml."""
    comparisons = [
        cl.CustomComparison([_creator(cll, level) for level in c["levels"]], output_column_name=c["name"])
        if "levels" in c
        else _creator(cl, c)
        for c in linkage.comparisons
    ]
    return SettingsCreator(
        link_type=linkage.link_type,
        unique_id_column_name=linkage.unique_id_column,
        comparisons=comparisons,
        blocking_rules_to_generate_predictions=[_blocking_rule(r) for r in linkage.blocking_rules],
        retain_matching_columns=True,  # needed for the gamma_* levels; resolve writes no *_l/*_r values
        retain_intermediate_calculation_columns=False,
        additional_columns_to_retain=[],
    )


def linkage_input(admitted: DataFrame, linkage: LinkageConfig) -> DataFrame:
    """Admitted records as Splink sees them: a record id and the compared columns only.

    A column silver does not hold under the policy (a pseudonym not enabled) is null: its comparison
    then says nothing and its blocking rule pairs nothing.
    """
    record_id = F.concat_ws(":", F.col("source_system"), F.col("source_record_id")).alias(linkage.unique_id_column)
    columns = [F.col(c) if c in admitted.columns else F.lit(None).cast("string").alias(c) for c in LINKAGE_COLUMNS]
    return admitted.select(record_id, *columns)


def train(linker: Linker, linkage: LinkageConfig) -> None:
    """Estimate lambda (deterministic rules), u (random sampling) and m (EM on each training rule)."""
    linker.training.estimate_probability_two_random_records_match(
        [_blocking_rule(r) for r in linkage.deterministic_rules], recall=linkage.recall
    )
    # One chunk: on Spark every chunk is a round of small jobs, and the sample is the same size.
    linker.training.estimate_u_using_random_sampling(max_pairs=linkage.u_max_pairs, seed=linkage.seed, num_chunks=1)
    for rule in linkage.em_blocking_rules:
        linker.training.estimate_parameters_using_expectation_maximisation(_blocking_rule(rule))


def save_model(linker: Linker, models_dir: Path, now: datetime | None = None) -> ModelVersion:
    """Write the trained model as JSON named by its UTC time and content hash; return its version."""
    models_dir.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    draft = models_dir / f".draft-{stamp}.json"
    linker.misc.save_model_to_json(str(draft), overwrite=True)
    digest = hashlib.sha256(draft.read_bytes()).hexdigest()[:12]
    version = f"{stamp}-{digest}"
    path = models_dir / f"{MODEL_PREFIX}{version}.json"
    draft.replace(path)
    return ModelVersion(path=path, version=version)


def latest_model(models_dir: Path) -> ModelVersion | None:
    """The newest saved model (names sort by time), or None."""
    models = sorted(models_dir.glob(f"{MODEL_PREFIX}*.json")) if models_dir.is_dir() else []
    if not models:
        return None
    path = models[-1]
    return ModelVersion(path=path, version=path.stem.removeprefix(MODEL_PREFIX))


def load_model_settings(model: ModelVersion) -> dict[str, Any]:
    """A saved model as the settings dict Linker takes."""
    return json.loads(model.path.read_text(encoding="utf-8"))


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
