"""linkage_model_training: retrain the Splink model on the currently admitted records."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG
from idres_common import DEFAULT_ARGS, RUN_TYPES, spark_job

DOC = """
### linkage_model_training
Trains a new Splink model version on the records the consent gate currently admits: lambda from
deterministic rules, u by random sampling, m by expectation maximisation on two blocking rules
(`conf/splink.yaml`), on the engine `resolve.engine` picks. The model JSON is versioned by time,
engine, settings hash and content hash under `models/`, with its charts (match weights, m/u
parameters, unlinkables) under `reports/models/<version>/`. The daily `identity_resolution` run uses
the newest model trained with the current settings, on either engine. Triggered manually.
"""

with DAG(
    dag_id="linkage_model_training",
    doc_md=DOC,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    allowed_run_types=RUN_TYPES,
    tags=["idres", "splink", "training"],
    default_args=DEFAULT_ARGS,
) as dag:
    spark_job("train", "train")
