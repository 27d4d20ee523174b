"""The shared entry point of every job: parse arguments, load config, build the session, call run()."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import SparkSession

from jobs.config import PipelineConfig, load_config
from jobs.errors import IdresError
from jobs.spark_session import build_spark_session

log = logging.getLogger("idres")


def new_run_id() -> str:
    """A run id for runs started outside Airflow."""
    return "manual__" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


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

    Project errors (IdresError) end the process with exit code 2 and their message, which names
    the offending source, column or key and never a data value.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("splink").setLevel(logging.WARNING)  # Splink narrates every step at INFO
    parser = parser or job_arg_parser(f"idres {name} job")
    args = vars(parser.parse_args(argv))
    conf_dir = args.pop("conf")
    run_id = args.pop("run_id") or new_run_id()
    try:
        cfg: PipelineConfig = load_config(conf_dir)
        spark: SparkSession = build_spark_session(cfg.spark, app_name=f"idres-{name}")
        return run(spark, cfg, run_id=run_id, **args)
    except IdresError as exc:
        log.error("%s failed: %s", name, exc)
        sys.exit(2)
