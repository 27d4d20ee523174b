"""What every idres DAG shares: the project location, how a stage is submitted to Spark, the table assets."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset

PROJECT = Path(os.environ.get("IDRES_HOME", Path(__file__).resolve().parents[1]))
CONF = Path(os.environ.get("IDRES_CONF", PROJECT / "conf"))
JOBS = PROJECT / "jobs"
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=30), "owner": "data-engineering"}
# Every run is of the extracts and consent as they are now: a backfill would run them again under old dates, several
# runs at once (a backfill has its own max_active_runs).
RUN_TYPES = ("scheduled", "manual", "operator_triggered", "asset_triggered", "asset_materialization")


def table_assets(*tables: str) -> list[Asset]:
    """Airflow Assets for Delta tables named by their lakehouse path (e.g. 'gold/profiles'). The URI names the table
    within the lakehouse, not the folder: the jobs find that in the config (paths.lakehouse, IDRES_LAKEHOUSE), which a
    DAG file does not read, and Airflow stops a task whose asset's URI changed under its name."""
    return [Asset(name=f"idres.{t.replace('/', '.')}", uri=f"idres://lakehouse/{t}", group="delta") for t in tables]


# What a stage's driver JVM takes at launch (memory, garbage collector); the job cannot set it once running.
SPARK_SUBMIT_CONF: dict[str, str] = json.loads((CONF / "spark-submit.json").read_text(encoding="utf-8"))

GOLD = table_assets("gold/profiles", "gold/profile_sources", "gold/profile_lineage", "gold/profile_permissions")


def spark_job(task_id: str, module: str, *args: str, outlets: list[Asset] | None = None) -> SparkSubmitOperator:
    """A stage of the pipeline, submitted through the spark_default connection with Airflow's run id and the config
    folder this file read spark-submit.json from (a job installed as a package would look beside it)."""
    return SparkSubmitOperator(
        task_id=task_id,
        application=str(JOBS / f"{module}.py"),
        name=f"idres-{task_id.replace('_', '-')}",
        conn_id="spark_default",
        conf=SPARK_SUBMIT_CONF,
        application_args=["--run-id", "{{ run_id }}", "--conf", str(CONF), *args],
        outlets=outlets or [],
    )
