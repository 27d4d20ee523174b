"""The shared entry point of every job: parse arguments, load config, build the session, call run()."""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from pyspark.sql import SparkSession

from jobs import delta_io
from jobs.config import PROJECT_ROOT, PipelineConfig, load_config
from jobs.errors import IdresError, LakehouseBusyError, LakehouseLockUnsupportedError
from jobs.scratch import remove_dead_scratch_dirs
from jobs.spark_session import build_spark_session

log = logging.getLogger("idres")


def new_run_id() -> str:
    """A run id for runs started outside Airflow."""
    return "manual__" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


LOCK_FILE = "_idres.lock"


def lakehouse_lock_path(cfg: PipelineConfig) -> Path:
    """The lock file every job of a lakehouse holds while it runs."""
    return cfg.lakehouse / LOCK_FILE


@contextmanager
def lakehouse_lock(cfg: PipelineConfig, job: str) -> Iterator[None]:
    """Hold the lakehouse lock, waiting up to cfg.concurrency.lock_timeout_seconds for another job to end.

    Airflow's max_active_runs covers one DAG only: a CLI run beside a DAG run, or identity_resolution beside
    subject_requests, would otherwise write the same tables at once. The lock is an OS file lock (flock),
    released by the kernel if the holder dies, so a killed job never leaves the lakehouse locked; on a file
    system without flock, filelock's marker-file fallback would stay held after a killed job (forever, from
    another container), so that fails instead. Raises LakehouseBusyError when the wait runs out. Once held,
    what a killed job left is cleaned up first: beside the tables (delta_io.recover_from_killed_writes) and its
    scratch folders in the temp dir (jobs.scratch).
    """
    path = lakehouse_lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), fallback_to_soft=False)
    timeout = cfg.concurrency.lock_timeout_seconds
    try:
        lock.acquire(timeout=0)
    except Timeout:  # a TimeoutError, so an OSError: before the clause below
        log.info("%s: waiting up to %g s for the lakehouse lock %s held by another job", job, timeout, path)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise LakehouseBusyError(str(path), timeout) from None
    except OSError as err:
        if err.errno not in (errno.ENOSYS, errno.ENOLCK):  # no flock; NFS without its lock service
            raise
        raise LakehouseLockUnsupportedError(str(path)) from None
    try:
        if recovered := delta_io.recover_from_killed_writes(cfg.tables) + remove_dead_scratch_dirs():
            log.warning("%s: removed what a killed job left: %s", job, ", ".join(recovered))
        yield
    finally:
        lock.release()


INCIDENTS_DIR = "_incidents"
MAX_RUN_ID_IN_NAME = 100  # characters of the run id an incident file's name keeps


def _incident_file(cfg: PipelineConfig, job: str, run_id: str, exc: BaseException) -> str:
    """record_incident's file, or why there is none (never the error's text)."""
    try:
        return str(record_incident(cfg, job, run_id, exc))
    except Exception as failure:  # whose chained traceback would print the text of exc
        return f"no file: the incident could not be written ({type(failure).__name__})"


def record_incident(cfg: PipelineConfig, job: str, run_id: str, exc: BaseException) -> Path:
    """Write exc's full traceback into the lakehouse, readable by its owner only; return the file.

    An unexpected error's text may quote a data value (Spark puts a failed task's exception message in
    its own), and logs travel further than the data: to Airflow's UI and log shipping. The lakehouse
    holds the data already, under the data's access control.
    """
    folder = cfg.lakehouse / INCIDENTS_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    safe_run_id = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    if len(safe_run_id) > MAX_RUN_ID_IN_NAME:  # Airflow allows 250 characters; a file name 255 bytes
        digest = hashlib.sha256(run_id.encode("utf-8")).hexdigest()[:12]
        safe_run_id = f"{safe_run_id[: MAX_RUN_ID_IN_NAME - 13]}-{digest}"
    path = folder / f"{stamp}-{job}-{safe_run_id}.txt"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as incident:
        incident.write("".join(traceback.format_exception(exc)))
    return path


def describe_without_values(exc: BaseException) -> str:
    """The error's class (the JVM's, for a Py4J error) and the innermost line of jobs/ it passed: no message."""
    kind = type(exc).__name__
    if (java := getattr(exc, "java_exception", None)) is not None:
        with contextlib.suppress(Exception):  # the JVM died with the job: the Python class, never the message
            kind = java.getClass().getName()
    frames = [(Path(f.filename).resolve(), f) for f in traceback.extract_tb(exc.__traceback__)]
    ours = [(path, f) for path, f in frames if path.is_relative_to(PROJECT_ROOT / "jobs")]
    if not ours:
        return kind
    path, frame = ours[-1]
    return f"{kind} at {path.relative_to(PROJECT_ROOT)}:{frame.lineno} in {frame.name}"


def job_arg_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every job takes; a job may add its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--conf", help="config directory (default: the project's conf/)")
    parser.add_argument("--run-id", default=None, help="the pipeline run id (Airflow's run_id)")
    return parser


def run_job(
    name: str, run: Callable[..., Any], argv: Sequence[str] | None, parser: argparse.ArgumentParser | None = None
) -> Any:
    """Run `run(spark, cfg, run_id=..., **extra_args)` as a spark-submit-able job.

    The job holds the lakehouse lock (lakehouse_lock) while its session is built and run() runs.
    Project errors (IdresError) end the process with exit code 2 and their message, which names
    the offending source, column or key and never a data value. Any other error ends it with exit
    code 1, logged as its class and place only; its full text goes to record_incident's file.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("splink").setLevel(logging.WARNING)  # Splink narrates every step at INFO
    parser = parser or job_arg_parser(f"idres {name} job")
    args = vars(parser.parse_args(argv))
    conf_dir = args.pop("conf")
    run_id = args.pop("run_id") or new_run_id()
    cfg: PipelineConfig | None = None
    incident: str | None = None
    try:
        cfg = load_config(conf_dir)
        with lakehouse_lock(cfg, name):
            try:
                spark: SparkSession = build_spark_session(cfg.spark, app_name=f"idres-{name}")
                return run(spark, cfg, run_id=run_id, **args)
            except IdresError:
                raise
            except Exception as exc:
                # Written holding the lock: an erasure waiting for it then finds (and scans) the file.
                incident = _incident_file(cfg, name, run_id, exc)
                raise
    except IdresError as exc:
        log.error("%s failed: %s", name, exc)
        sys.exit(2)
    except Exception as exc:
        if cfg is None:
            raise
        incident = incident or _incident_file(cfg, name, run_id, exc)
        log.error(
            "%s failed: %s. Its full text may quote personal data, so it is not logged; it is in %s",
            name,
            describe_without_values(exc),
            incident,
        )
        sys.exit(1)
