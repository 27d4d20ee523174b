"""What every idres DAG shares: the project location and how a stage is submitted to Spark."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

PROJECT = Path(os.environ.get("IDRES_HOME", Path(__file__).resolve().parents[1]))
JOBS = PROJECT / "jobs"
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=30), "owner": "data-engineering"}


def spark_job(task_id: str, module: str, *args: str) -> SparkSubmitOperator:
    """A stage of the pipeline, submitted through the spark_default connection with Airflow's run id."""
    return SparkSubmitOperator(
        task_id=task_id,
        application=str(JOBS / f"{module}.py"),
        name=f"idres-{task_id.replace('_', '-')}",
        conn_id="spark_default",
        application_args=["--run-id", "{{ run_id }}", *args],
    )
