"""identity_resolution: regional sources -> bronze -> silver -> consent gate -> resolved -> gated golden profiles."""

from __future__ import annotations

import sys
from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param
from idres_common import CONF, DEFAULT_ARGS, GOLD, PROJECT, RUN_TYPES, spark_job, table_assets

DOC = """
### identity_resolution
1. **demo_data**: (re)generates the bundled demo extracts when param `demo_people` is above 0. The default, 0,
   leaves the landing zone as it is, so a scheduled run reads the real extracts; `make run` passes 2000. It never
   writes over a file it did not write itself (a real extract): it fails naming the file.
2. **ingest**: maps every regional extract to one canonical schema into the bronze Delta table; malformed rows
   go to quarantine with a reason code.
3. **standardize**: names (native, Latin, convention-tolerant key), emails, phones (E.164), dates, addresses
   and countries into silver; sensitive attributes never leave bronze.
4. **consent_gate**: lands the consent feeds in the ledger, computes effective consent as of the run, and
   admits to resolution only records with a permitted lawful basis, minimized to their purposes. Every
   decision is audited in `audit/consent_decisions`.
5. **resolve**: Splink (Fellegi-Sunter) with the latest model trained with the current `conf/splink.yaml`
   (trained when none exists), on Spark or on DuckDB inside the Spark driver (`resolve.engine` in
   `conf/pipeline.yaml`; `auto`: DuckDB on a local master for at most `duckdb_max_records`, 3M, admitted
   records): pairwise matches, clusters,
   and stable profile ids with created / merged / split / moved / retired events, staged for the quality gate.
6. **unify**: golden-profile candidates by the survivorship rules (`conf/survivorship.yaml`), with cell-level
   lineage (source record, rule, purpose, lawful basis, consent event) and per-purpose permissions, staged
   under `staging/gold/`; a withdrawn record's values leave its profile on this run.
7. **quality_gate**: write-audit-publish. Great Expectations suites (`expectations/`) validate the staged
   gold and the run's tables (consent compliance, unique ids, formats, cluster-size bound, profile-id churn,
   reconciliation counts). Only when all hold are resolve's and unify's staged tables merged into the
   published ones (each table committed once per publication; a run cleared and run again publishes its new
   candidates as its next publication; a publish that dies between tables is completed by the task's retry, or
   else first thing by the next run's resolve); otherwise the task fails naming the failed expectations and every
   published table stays at its previous version. Either way it writes `reports/runs/<run id>/`:
   quality.json, GX Data Docs and the auditor report (index.html).

Param `mode`: `full` reads every source extract; `incremental` skips an extract byte-identical to the one its
last ingest read under the same source settings and ingest code (zero counts recorded for it). Each stage
declares the tables it writes as Airflow Assets; resolve and unify only stage theirs, so quality_gate declares
them.

Each Spark stage is submitted through the `spark_default` connection (`make run` sets it to `local[*]`; Airflow's
own default is YARN): point that connection at a cluster and the same jobs run there. Backfills are not allowed:
every run reads the extracts and consent feeds as they are now.
"""

with DAG(
    dag_id="identity_resolution",
    doc_md=DOC,
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    allowed_run_types=RUN_TYPES,
    tags=["idres", "identity-resolution", "gdpr"],
    default_args=DEFAULT_ARGS,
    params={
        "demo_people": Param(0, type="integer", minimum=0, description="demo people to make; 0: the landing as is"),
        "demo_corrupt": Param(True, type="boolean", description="append known-bad rows to the demo sources"),
        "mode": Param("full", enum=["full", "incremental"], description="incremental skips unchanged extracts"),
    },
) as dag:
    demo_data = BashOperator(
        task_id="demo_data",
        bash_command=f"'{sys.executable}' -m jobs.demo_data --conf '{CONF}' --people {{{{ params.demo_people }}}}"
        "{{ ' --corrupt' if params.demo_corrupt else '' }}",
        cwd=str(PROJECT),
    )
    ingest = spark_job(
        "ingest",
        "ingest",
        "--mode",
        "{{ params.mode }}",
        outlets=table_assets("bronze/customers", "bronze/quarantine", "audit/ingest_runs"),
    )
    standardize = spark_job("standardize", "standardize", outlets=table_assets("silver/customers"))
    consent_gate = spark_job(
        "consent_gate",
        "consent",
        "--cutoff",
        "{{ dag_run.run_after }}",
        outlets=table_assets(
            "silver/consent_ledger",
            "bronze/consent_quarantine",
            "silver/effective_consent",
            "silver/admitted_customers",
            "audit/consent_decisions",
            "audit/consent_runs",
        ),
    )
    resolve = spark_job("resolve", "resolve")  # stages its tables; the quality gate publishes them
    unify = spark_job("unify", "unify")
    quality_gate = spark_job(
        "quality_gate",
        "quality_gate",
        outlets=[
            *GOLD,
            *table_assets(
                "gold/pairwise_matches",
                "gold/record_profiles",
                "gold/profile_registry",
                "audit/identity_events",
                "audit/unify_runs",
            ),
        ],
    )

    demo_data >> ingest >> standardize >> consent_gate >> resolve >> unify >> quality_gate
