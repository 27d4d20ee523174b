"""DAG integrity, and one real run of the identity_resolution DAG through `airflow dags test`."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import delta_io
from jobs.config import load_config

PROJECT = Path(__file__).resolve().parents[1]
DAGS = PROJECT / "dags"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("airflow-run")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(root / "airflow_home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": '{"conn_type": "spark", "host": "local[2]"}',
        "IDRES_LAKEHOUSE": str(root / "lakehouse"),
        "IDRES_LANDING": str(root / "landing"),
        "IDRES_GROUND_TRUTH": str(root / "truth"),
        "IDRES_MODELS": str(root / "models"),
        "IDRES_REPORTS": str(root / "reports"),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for key in ("AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__LOAD_EXAMPLES"):
        os.environ.setdefault(key, env[key])
    return env


def test_dag_files_import_only_airflow_and_the_standard_library():
    for path in DAGS.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        top = {m.split(".")[0] for m in modules}
        assert top <= {"airflow", "__future__", "os", "sys", "datetime", "pathlib", "idres_common"}, (path.name, top)


def test_dags_load_without_errors_and_carry_docs_tags_and_retries(airflow_env, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.syspath_prepend(str(DAGS))  # as Airflow's DAG processor does for the dags folder

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {"identity_resolution", "linkage_model_training", "subject_requests"}
    for dag_id in bag.dag_ids:
        dag = bag.dags[dag_id]
        assert dag.doc_md and dag.tags, dag_id
        for task in dag.tasks:
            assert task.retries >= 1 or task.task_id == "demo_data", (dag_id, task.task_id)
    assert [t.task_id for t in bag.dags["identity_resolution"].topological_sort()] == [
        "demo_data",
        "ingest",
        "standardize",
        "consent_gate",
        "resolve",
        "unify",
        "quality_gate",
    ]
    pipeline = bag.dags["identity_resolution"]
    assert pipeline.params["mode"] == "full"
    outlets = {t.task_id: {a.name for a in t.outlets} for t in pipeline.tasks}
    assert "idres.gold.profiles" in outlets["quality_gate"]
    assert "idres.bronze.customers" in outlets["ingest"]
    assert "idres.gold.profiles" in {a.name for t in bag.dags["subject_requests"].tasks for a in t.outlets}


def _airflow(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_running_the_dag_twice_changes_nothing_the_second_time(airflow_env):
    _airflow(airflow_env, "db", "migrate")
    _airflow(airflow_env, "dags", "test", "identity_resolution", "2026-01-01", "-c", '{"demo_people": 40}')
    lakehouse = Path(airflow_env["IDRES_LAKEHOUSE"])
    bronze = lakehouse / "bronze" / "customers"
    gated = [lakehouse / "silver" / t for t in ("customers", "effective_consent", "admitted_customers")]
    gated += [lakehouse / "gold" / t for t in ("profiles", "profile_sources", "profile_lineage", "profile_permissions")]
    truth = Path(airflow_env["IDRES_GROUND_TRUTH"]) / "records.csv"
    expected_rows = sum(1 for _ in truth.open(encoding="utf-8")) - 1
    count_sql = "SELECT count(*) AS n FROM b"
    assert delta_io.query_delta(count_sql, b=bronze).column("n")[0].as_py() == expected_rows
    version = delta_io.table_version(bronze)
    gated_versions = [delta_io.table_version(t) for t in gated]
    assert None not in gated_versions
    assert delta_io.history(bronze)[0]["run_id"].startswith("manual__")  # Airflow's run_id

    reports = sorted((Path(airflow_env["IDRES_REPORTS"]) / "runs").glob("*/quality.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["published"] is True
    assert (reports[0].parent / "index.html").is_file() and (reports[0].parent / "data_docs" / "index.html").is_file()

    second = '{"demo_people": 40, "mode": "incremental"}'
    _airflow(airflow_env, "dags", "test", "identity_resolution", "2026-01-02", "-c", second)
    runs = delta_io.query_delta(
        "SELECT run_id, sum(rows_read) AS n FROM r GROUP BY 1 ORDER BY max(ingested_at)",
        r=lakehouse / "audit" / "ingest_runs",
    ).to_pylist()
    assert len(runs) == 2 and runs[0]["n"] > expected_rows and runs[1]["n"] == 0  # unchanged extracts skipped
    assert delta_io.query_delta(count_sql, b=bronze).column("n")[0].as_py() == expected_rows
    assert delta_io.table_version(bronze) == version
    assert [delta_io.table_version(t) for t in gated] == gated_versions  # nothing changed, nothing committed
    assert load_config().sources  # the project config was untouched by the run
