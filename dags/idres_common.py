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
# A relative IDRES_LAKEHOUSE is relative to the project, as the jobs take it (asset URIs must be absolute).
LAKEHOUSE = PROJECT / os.environ.get("IDRES_LAKEHOUSE", "lakehouse")
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=30), "owner": "data-engineering"}


def table_assets(*tables: str) -> list[Asset]:
    """Airflow Assets for Delta tables named by their lakehouse path (e.g. 'gold/profiles')."""
    return [Asset(name=f"idres.{t.replace('/', '.')}", uri=(LAKEHOUSE / t).as_uri(), group="delta") for t in tables]


# What a stage's driver JVM takes at launch (memory, garbage collector); the job cannot set it once running.
SPARK_SUBMIT_CONF: dict[str, str] = json.loads((CONF / "spark-submit.json").read_text(encoding="utf-8"))

GOLD = table_assets("gold/profiles", "gold/profile_sources", "gold/profile_lineage", "gold/profile_permissions")


def spark_job(task_id: str, module: str, *args: str, outlets: list[Asset] | None = None) -> SparkSubmitOperator:
    """A stage of the pipeline, submitted through the spark_default connection with Airflow's run id."""
    return SparkSubmitOperator(
        task_id=task_id,
        application=str(JOBS / f"{module}.py"),
        name=f"idres-{task_id.replace('_', '-')}",
        conn_id="spark_default",
        conf=SPARK_SUBMIT_CONF,
        application_args=["--run-id", "{{ run_id }}", *args],
        outlets=outlets or [],
    )
