"""Train the Splink model on the admitted records and save it, versioned, with its charts.

Lambda comes from deterministic rules, u from random sampling, m from expectation maximisation
on at least two blocking rules (conf/splink.yaml). Training runs on the engine conf/pipeline.yaml's
`resolve` section picks (jobs.linkage.choose_engine); the model serves both engines. The model is
written as JSON named by its UTC time, engine, settings hash and content hash; the charts go to
reports/models/<version>/.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pyspark.sql import SparkSession
from splink.internals.exceptions import EMTrainingException

from jobs import delta_io
from jobs.config import PipelineConfig
from jobs.consent import gating_policy
from jobs.engines import SqlEngine, open_engine
from jobs.errors import IdresError
from jobs.linkage import (
    ModelVersion,
    latest_model,
    linkage_records,
    linker_for,
    pick_engine,
    save_model,
    save_model_charts,
    splink_settings,
    train,
)
from jobs.runner import run_job
from jobs.spark_session import size_stage_to_input

log = logging.getLogger("idres.train")


def train_and_save(db: SqlEngine, cfg: PipelineConfig, records: str) -> ModelVersion:
    """Train on the engine db's table of linkage records (jobs.linkage.linkage_records); write the model and
    its charts. Records too few for a training rule to find a pair raise NothingToTrainError.

    The model is keyed to the current purpose policy (jobs.linkage.settings_hash), so records the consent gate
    admitted under another one (conf/policy.yaml changed since) are refused: it would be reused as this policy's
    while it learned nothing of what the policy now lets silver hold."""
    gated = gating_policy(cfg)
    if gated is not None and gated != cfg.policy.fingerprint:
        raise IdresError(
            f"train: the admitted records were gated under another purpose policy (fingerprint {gated}; "
            f"conf/policy.yaml is now {cfg.policy.fingerprint}); run the consent gate first (the "
            "identity_resolution DAG), then train"
        )
    linker = linker_for(db, records, splink_settings(cfg.linkage))
    try:
        train(linker, cfg.linkage)
    except (EMTrainingException, ZeroDivisionError, ValueError) as exc:
        if isinstance(exc, ValueError) and not any(sign in str(exc) for sign in TOO_FEW_RECORDS_SIGNS):
            raise  # a settings problem Splink names, or a bug: its own message, in the incident file
        # Too few or too alike records: a rule found no pair (lambda: no pair at all, ZeroDivisionError), more
        # pairs than the recall allows among all pairs, or none to estimate lambda from while EM found some
        # (Splink's ValueErrors). Splink's message is not repeated: it is not ours to keep free of values.
        raise NothingToTrainError(
            f"Splink cannot train a model on {db.count(records)} admitted records ({type(exc).__name__} while "
            "estimating): too few, or too alike, for the training rules of conf/splink.yaml; no model written "
            "(train on more records)"
        ) from None
    model = save_model(linker, cfg.linkage, cfg.policy, db.name, cfg.models)
    save_model_charts(linker, cfg.reports / "models" / model.version)
    log.info("trained Splink model %s on %s", model.version, db.name)
    return model


# What Splink's ValueErrors say when the records are too few or too alike to train on: more pairs by the
# deterministic rules than the recall allows among all pairs, lambda 0 (no deterministic pair) while EM found
# pairs (log of 0), and an m EM drove to 0.
TOO_FEW_RECORDS_SIGNS = (
    "more observed matches than is consistent with supplied recall",
    "math domain error",
    "below the minimum allowed value",
)


class NothingToTrainError(IdresError):
    """Too few admitted records to train on: Splink cannot estimate a model without pairs of them."""


def training_needed(cfg: PipelineConfig) -> bool:
    """Whether resolve would train: no model trained with the current settings, and records that make a pair."""
    return latest_model(cfg.models, cfg.linkage, cfg.policy) is None and delta_io.row_count(cfg.tables.admitted) > 1


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> ModelVersion:
    """Train a new model version on the currently admitted records."""
    delta_io.require_table(cfg.tables.admitted, "consent_gate")
    count = delta_io.row_count(cfg.tables.admitted)
    if count < 2:
        raise NothingToTrainError(
            f"{'no admitted records' if not count else 'one admitted record'} to train on in {cfg.tables.admitted};"
            " no model written (the latest stays in use)"
        )
    size_stage_to_input(spark, cfg.spark, count)
    with open_engine(spark, pick_engine(spark, cfg.resolve, count)) as db:
        return train_and_save(db, cfg, linkage_records(db, cfg))


def main(argv: Sequence[str] | None = None) -> ModelVersion:
    return run_job("train", run, argv)


if __name__ == "__main__":
    # Call through the package module, so Spark pickles its functions by reference, not as __main__'s.
    from jobs.train import main as job_main

    job_main()
