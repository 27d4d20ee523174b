"""identity_resolution: regional sources -> bronze -> silver -> consent-gated records."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

PROJECT = Path(os.environ.get("IDRES_HOME", Path(__file__).resolve().parents[1]))
JOBS = PROJECT / "jobs"

DOC = """
### identity_resolution
Pulls the regional customer extracts, maps them to one canonical schema and lands them in the
bronze Delta table (malformed rows go to quarantine with a reason code); standardizes names,
emails, phones, dates, addresses and countries into silver, dropping sensitive attributes; then
lands the consent feeds in the consent ledger, computes effective consent as of the run and
admits to identity resolution only records with a permitted lawful basis, keeping only the
attributes their purposes allow. Every gate decision is audited in `audit/consent_decisions`.

Each stage is a Spark application submitted through the `spark_default` connection (`local[*]`
by default): point that connection at a cluster and the same jobs run there.

Params: `demo_people`, the size of the bundled demo data to (re)generate first (0 leaves the
landing zone as it is), and `demo_corrupt`, whether the demo carries known-bad rows.
"""

with DAG(
    dag_id="identity_resolution",
    doc_md=DOC,
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["idres", "identity-resolution", "gdpr"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "owner": "data-engineering"},
    params={
        "demo_people": Param(2000, type="integer", minimum=0, description="demo people; 0 = none"),
        "demo_corrupt": Param(True, type="boolean", description="append known-bad rows to the demo sources"),
    },
) as dag:
    demo_data = BashOperator(
        task_id="demo_data",
        bash_command=f"'{sys.executable}' -m jobs.demo_data --people {{{{ params.demo_people }}}}"
        "{{ ' --corrupt' if params.demo_corrupt else '' }}",
        cwd=str(PROJECT),
        retries=0,
    )

    ingest = SparkSubmitOperator(
        task_id="ingest",
        application=str(JOBS / "ingest.py"),
        name="idres-ingest",
        conn_id="spark_default",
        application_args=["--run-id", "{{ run_id }}"],
    )

    standardize = SparkSubmitOperator(
        task_id="standardize",
        application=str(JOBS / "standardize.py"),
        name="idres-standardize",
        conn_id="spark_default",
        application_args=["--run-id", "{{ run_id }}"],
    )

    consent_gate = SparkSubmitOperator(
        task_id="consent_gate",
        application=str(JOBS / "consent.py"),
        name="idres-consent-gate",
        conn_id="spark_default",
        application_args=["--run-id", "{{ run_id }}", "--cutoff", "{{ dag_run.run_after }}"],
    )

    demo_data >> ingest >> standardize >> consent_gate
