"""identity_resolution: regional sources -> bronze -> silver -> consent gate -> resolved -> golden profiles."""

from __future__ import annotations

import sys
from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param
from idres_common import DEFAULT_ARGS, PROJECT, spark_job

DOC = """
### identity_resolution
1. **demo_data**: (re)generates the bundled demo extracts (param `demo_people`, 0 = leave the landing zone).
2. **ingest**: maps every regional extract to one canonical schema into the bronze Delta table; malformed rows
   go to quarantine with a reason code.
3. **standardize**: names (native, Latin, convention-tolerant key), emails, phones (E.164), dates, addresses
   and countries into silver; sensitive attributes never leave bronze.
4. **consent_gate**: lands the consent feeds in the ledger, computes effective consent as of the run, and
   admits to resolution only records with a permitted lawful basis, minimized to their purposes. Every
   decision is audited in `audit/consent_decisions`.
5. **resolve**: Splink (Fellegi-Sunter) on Spark with the latest trained model (trained when none exists):
   pairwise matches, clusters, and stable profile ids with created / merged / split / retired events.
6. **unify**: golden profiles by the survivorship rules (`conf/survivorship.yaml`), with cell-level lineage
   (source record, rule, purpose, lawful basis, consent event) and per-purpose permissions, merged into Delta;
   a withdrawn record's values leave its profile on this run. Each table commits once per run id.

Each Spark stage is submitted through the `spark_default` connection (`local[*]` by default): point that
connection at a cluster and the same jobs run there.
"""

with DAG(
    dag_id="identity_resolution",
    doc_md=DOC,
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["idres", "identity-resolution", "gdpr"],
    default_args=DEFAULT_ARGS,
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
    ingest = spark_job("ingest", "ingest")
    standardize = spark_job("standardize", "standardize")
    consent_gate = spark_job("consent_gate", "consent", "--cutoff", "{{ dag_run.run_after }}")
    resolve = spark_job("resolve", "resolve")
    unify = spark_job("unify", "unify")

    demo_data >> ingest >> standardize >> consent_gate >> resolve >> unify
