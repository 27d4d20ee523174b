"""subject_requests: a data subject's access (export) or erasure request, run on demand with params."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param
from idres_common import DEFAULT_ARGS, GOLD, RUN_TYPES, spark_job, table_assets

DOC = """
### subject_requests
Carries out one data-subject request (GDPR Art. 15 / Art. 17). Trigger with params:
- `action`: `export` writes a JSON of everything held about the subject, with each value's source record,
  purpose and lawful basis and the match evidence; `erase` deletes the subject from every table, re-resolves
  what it bridged, purges Delta history, scans the lakehouse to prove the values are gone and writes an
  erasure certificate.
- `record`: `<source_system>:<source_record_id>`, or `profile_id`: every source record of that profile.

Files land in `reports/subject_requests/`. Only identifiers go in (they appear in the task's spark-submit
command line); the job's own log lines carry the subject's hash and counts, never a value.
"""

with DAG(
    dag_id="subject_requests",
    doc_md=DOC,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    allowed_run_types=RUN_TYPES,
    tags=["idres", "gdpr", "subject-rights"],
    # Safe to retry: an erasure's retry reads what its first attempt found (time travel), or, once that attempt
    # had scanned, finishes the history purge from its values-free pending certificate.
    default_args=DEFAULT_ARGS,
    params={
        "action": Param("export", enum=["export", "erase"], description="export (access) or erase (erasure)"),
        # Patterns keep a value typed in the wrong field (an email, text with spaces) out of the spark-submit command
        # line and its logs; a source's record ids may hold any other character. `(?!\n)`: `$` lets a newline end it.
        "record": Param(
            "",
            type="string",
            pattern=r"^([A-Za-z0-9_-]+:[^\s@]{1,200})?$(?!\n)",
            description="<source_system>:<source_record_id>, or empty",
        ),
        "profile_id": Param(
            "", type="string", pattern=r"^(pr_[0-9a-f]{20})?$(?!\n)", description="a profile id, or empty"
        ),
    },
) as dag:
    spark_job(
        "subject_request",
        "subject_rights",
        "{{ params.action }}",
        "--record={{ params.record }}",
        "--profile-id={{ params.profile_id }}",
        outlets=[  # an erasure deletes from every table
            *GOLD,
            *table_assets(
                "bronze/customers",
                "bronze/quarantine",
                "bronze/consent_quarantine",
                "silver/customers",
                "silver/consent_ledger",
                "silver/effective_consent",
                "silver/admitted_customers",
                "audit/consent_decisions",
                "gold/pairwise_matches",
                "gold/record_profiles",
                "gold/profile_registry",
                "audit/identity_events",
                "audit/unify_runs",
                "audit/erasure_register",
            ),
        ],
    )
