"""DAG integrity, and one real run of the identity_resolution DAG through `airflow dags test`."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import delta_io
from jobs.config import load_config
from tests.conftest import (
    DRIVER_CLASS_ARCHIVE,
    PROJECT,
    airflow_env_in,
    dag_run_config,
    data_table_versions,
    run_demo_dag,
)

DAGS = PROJECT / "dags"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = airflow_env_in(tmp_path_factory.mktemp("airflow-dagbag"))
    for key in ("AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__LOAD_EXAMPLES"):
        os.environ.setdefault(key, env[key])
    return env


def test_dag_files_import_only_airflow_and_the_standard_library():
    for path in DAGS.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        top = {m.split(".")[0] for m in modules}
        assert top <= {"airflow", "__future__", "os", "sys", "json", "datetime", "pathlib", "idres_common"}, (
            path.name,
            top,
        )


def test_dags_load_without_errors_and_carry_docs_tags_and_retries(airflow_env, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import ParamValidationError

    monkeypatch.syspath_prepend(str(DAGS))  # as Airflow's DAG processor does for the dags folder

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {"identity_resolution", "linkage_model_training", "subject_requests"}
    for dag_id in bag.dag_ids:
        dag = bag.dags[dag_id]
        assert dag.doc_md and dag.tags, dag_id
        for task in dag.tasks:
            assert task.retries >= 1, (dag_id, task.task_id)
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
    assert pipeline.params["demo_people"] == 0  # a scheduled run reads the landing zone, never overwrites it
    outlets = {t.task_id: {a.name for a in t.outlets} for t in pipeline.tasks}
    published = {"idres.gold.profiles", "idres.gold.record_profiles", "idres.audit.identity_events"}
    assert published <= outlets["quality_gate"]
    assert outlets["resolve"] == set()  # it stages; the gate publishes
    assert "idres.bronze.customers" in outlets["ingest"]
    assert "idres.gold.profiles" in {a.name for t in bag.dags["subject_requests"].tasks for a in t.outlets}
    for dag_id in bag.dag_ids:  # a backfill runs several of a DAG's runs at once, whatever its max_active_runs
        run_types = {t.value for t in bag.dags[dag_id].allowed_run_types}
        assert "backfill" not in run_types and {"manual", "scheduled"} <= run_types, dag_id
    conf = str(PROJECT / "conf")  # the jobs read the folder the DAG read spark-submit.json from
    assert all(t.application_args[2:4] == ["--conf", conf] for t in pipeline.tasks if t.task_id != "demo_data")
    assert f"-m jobs.demo_data --conf '{conf}' " in pipeline.get_task("demo_data").bash_command
    requests = bag.dags["subject_requests"].params
    requests.get_param("record").resolve("ua_crm:UA-1000123")
    requests.get_param("profile_id").resolve("pr_0123456789abcdef0123")
    refused = [("record", "olena@example.com"), ("record", "ua_crm:olena@example.com"), ("profile_id", "x")]
    requests.get_param("record").resolve("ua_crm:КЛ-000123")  # ids need not be ASCII
    refused += [("record", "ua_crm:Olena Koval"), ("record", "ua_crm:UA-1\n")]
    refused += [("profile_id", "pr_0123456789abcdef0123\n")]
    for param, value in refused:
        with pytest.raises(ParamValidationError):  # kept out of the spark-submit command line and its log
            requests.get_param(param).resolve(value)


def test_the_dags_asset_uris_stay_the_same_wherever_the_lakehouse_is(tmp_path):
    """Airflow stops a task whose asset's URI changed under its name (AirflowInactiveAssetInInletOrOutletException),
    and the jobs' lakehouse comes from the config, which a DAG file does not read."""
    printed = []
    for lakehouse in (None, "relative/lake", str(tmp_path / "lake")):
        env = {k: v for k, v in os.environ.items() if k != "IDRES_LAKEHOUSE"} | {"AIRFLOW_HOME": str(tmp_path)}
        env |= {"IDRES_LAKEHOUSE": lakehouse} if lakehouse else {}
        printed += subprocess.run(
            [sys.executable, "-c", "import idres_common; print(idres_common.GOLD[0].uri)"],
            cwd=DAGS,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    assert printed == ["idres://lakehouse/gold/profiles"] * 3


@pytest.mark.slow
def test_a_dag_run_lands_every_record_under_airflows_run_id_and_publishes_with_its_reports(local_dag_run):
    cfg = dag_run_config(local_dag_run)
    truth = cfg.ground_truth / "records.csv"
    expected_rows = sum(1 for _ in truth.open(encoding="utf-8")) - 1
    assert delta_io.row_count(cfg.tables.bronze) == expected_rows
    assert None not in data_table_versions(cfg).values()
    assert delta_io.history(cfg.tables.bronze)[0]["run_id"].startswith("manual__")  # Airflow's run_id

    reports = sorted((cfg.reports / "runs").glob("*/quality.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["published"] is True
    assert (reports[0].parent / "index.html").is_file() and (reports[0].parent / "data_docs" / "index.html").is_file()


# A whole second DAG run (about 3 minutes) does not fit make test's budget; make test has the same check on
# the pipeline run in one session (test_faults_runs), and make test-faults runs this one.
@pytest.mark.heavy
@pytest.mark.fault
@pytest.mark.slow
def test_running_the_dag_twice_changes_nothing_the_second_time(local_dag_run):
    cfg = dag_run_config(local_dag_run)
    rows = delta_io.row_count(cfg.tables.bronze)
    versions_before = data_table_versions(cfg)

    run_demo_dag(local_dag_run, "2026-01-02", mode="incremental", demo_people=0)  # the same extracts again
    runs = delta_io.query_delta(
        "SELECT run_id, sum(rows_read) AS n FROM r GROUP BY 1 ORDER BY max(ingested_at)", r=cfg.tables.ingest_runs
    ).to_pylist()
    assert len(runs) == 2 and runs[0]["n"] > rows and runs[1]["n"] == 0  # unchanged extracts skipped
    assert delta_io.row_count(cfg.tables.bronze) == rows
    # nothing changed, nothing committed
    assert data_table_versions(cfg) == versions_before
    assert load_config().sources  # the project config was untouched by the run


@pytest.mark.slow
def test_each_stage_driver_gets_the_jvm_settings_of_spark_submit_json_and_the_class_archive(local_dag_run):
    console = (Path(local_dag_run["AIRFLOW_HOME"]).parent / "dag_run.log").read_text(encoding="utf-8")
    drivers = re.findall(
        r"driver JVM: max heap ([0-9.]+) GiB, garbage collectors ([^;\n]+); class archive ([^\s\[]+)", console
    )
    stages = ("ingest", "standardize", "consent_gate", "resolve", "unify", "quality_gate")
    assert len(drivers) == len(stages), drivers
    # spark-submit's default driver has a 1g heap and G1; conf/spark-submit.json asks for 4g and ParallelGC
    assert {frozenset(collectors.split(", ")) for _, collectors, _ in drivers} == {
        frozenset({"PS Scavenge", "PS MarkSweep"})
    }
    assert all(float(heap) > 3 for heap, _, _ in drivers), drivers
    # make install's archive, which the Makefile's SPARK_SUBMIT_OPTS hands every spark-submit driver
    assert {archive for _, _, archive in drivers} == {str(DRIVER_CLASS_ARCHIVE)}


@pytest.mark.slow
def test_no_stage_leaves_its_checkpoint_dir_behind(local_dag_run):
    console = (Path(local_dag_run["AIRFLOW_HOME"]).parent / "dag_run.log").read_text(encoding="utf-8")
    checkpoint_dirs = [Path(d) for d in re.findall(r"; checkpoints in (?:file:)?(\S+);", console)]
    assert len(checkpoint_dirs) == 6, checkpoint_dirs  # one per Spark stage
    temp = Path(local_dag_run["TMPDIR"])
    assert all(d.is_relative_to(temp) for d in checkpoint_dirs), checkpoint_dirs
    assert not [d for d in checkpoint_dirs if d.exists()]
    assert not list(temp.glob("idres-checkpoints-*"))
