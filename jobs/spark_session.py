"""The one place a SparkSession is built."""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pyspark import SparkContext, inheritable_thread_target
from pyspark.sql import DataFrame, SparkSession

from jobs import delta_io
from jobs.config import SparkConfig
from jobs.scratch import ScratchDir

log = logging.getLogger("idres.spark_session")
T = TypeVar("T")

# Loggers that print a failed task's or query's error text, which can quote a data value: Spark's executor
# and task scheduler, its file writer, Utils (a failed write's task abort, uncaught exceptions; its other
# messages are start-up warnings) and block manager (a task that fails computing a cached partition), all JVM,
# and PySpark's query-context loggers. A job logs such a failure by
# its class and keeps the full text in an incident file instead (jobs.runner.record_incident).
JVM_LOGGERS_QUOTING_ERRORS = (
    "org.apache.spark.executor.Executor",
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.sql.execution.datasources.FileFormatWriter",
    "org.apache.spark.util.Utils",
    "org.apache.spark.storage.BlockManager",
)
PYSPARK_LOGGERS_QUOTING_ERRORS = ("DataFrameQueryContextLogger", "SQLQueryContextLogger")


def splink_similarity_jar() -> str:
    """Path of Splink's bundled Spark similarity UDF jar (Jaro-Winkler and friends)."""
    from splink.backends.spark import similarity_jar_location

    return similarity_jar_location()


def launched_by_spark_submit() -> bool:
    """True when spark-submit started this driver (its JVM hands PySpark the gateway port)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_spark_session(
    settings: SparkConfig, app_name: str, extra_conf: Mapping[str, str] | None = None, checkpoint_dir: str | None = None
) -> SparkSession:
    """Build (or join) the Spark session: the master, Splink's jar, a checkpoint dir, quiet logs, and
    Python workers started by jobs.python_daemon.

    The master is spark-submit's `--master` when spark-submit launched the job (so Airflow's spark_default
    connection decides where DAG stages run), else settings.master (IDRES_SPARK_MASTER or pipeline.yaml).
    The checkpoint dir is checkpoint_dir, else spark.checkpoint.dir when configured, else a fresh temporary one.
    Under spark-submit the driver JVM already exists, so `spark.jars` set here no longer reaches the
    driver's class loader; `ADD JAR` puts Splink's UDFs on it in both cases.
    """
    jar = splink_similarity_jar()
    conf: dict[str, str] = {
        "spark.sql.session.timeZone": "UTC",
        # SQL text is data here (ids and run ids quoted into it): no ${...} substitution inside its literals.
        "spark.sql.variable.substitute": "false",
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # CSV extracts in any Java charset (cp1251, ISO 8859-2), not only the seven Unicode and Latin-1 names Spark 4
        # knows without it; the config loader checks each source's encoding (config.SPARK_CSV_CHARSETS).
        "spark.sql.legacy.javaCharsets": "true",
        # Parquet that delta-rs reads back as timestamp[us, UTC], like toArrow() (Spark's default is INT96).
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.ui.showConsoleProgress": "false",
        "spark.jars": jar,
        "spark.python.daemon.module": "jobs.python_daemon",
        **settings.conf,
        **(extra_conf or {}),
    }
    # Python workers use the driver's interpreter (and so its packages) unless told otherwise;
    # SparkContext reads this from the environment, not from the conf.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if not launched_by_spark_submit():
        builder = builder.master(settings.master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    with driver_temp_dir_in_scratch():
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    silence_loggers_quoting_errors(spark)
    # Listed jars are not necessarily on the driver's class loader (spark-submit), so always add it;
    # in a plain local session this only logs that the jar was added already.
    spark.sql(f"ADD JAR '{jar}'")
    # A configured spark.checkpoint.dir (storage every node sees, on a multi-machine cluster) is already set.
    if checkpoint_dir or not spark.sparkContext.getCheckpointDir():
        spark.sparkContext.setCheckpointDir(checkpoint_dir or temporary_scratch_dir("checkpoints"))
    log.info(
        "Spark %s on %s; checkpoints in %s; %s",
        spark.version,
        spark.sparkContext.master,
        spark.sparkContext.getCheckpointDir(),
        driver_jvm_summary(spark),
    )
    jvm = spark.sparkContext._jvm
    launched_with = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    if missed := launch_settings_missed(conf, launched_with):
        log.warning(
            "the driver JVM was launched without %s as configured (conf/spark-submit.json): a JVM takes them at "
            "launch, so pass them to spark-submit (--driver-memory, --conf), as the DAGs do",
            ", ".join(missed),
        )
    return spark


def launch_settings_missed(conf: Mapping[str, str], jvm_arguments: Sequence[str]) -> list[str]:
    """The driver's launch properties in conf (its memory and JVM options) that its JVM's arguments do not show: a
    job spark-submitted by hand without them runs with Spark's 1g heap and G1."""
    missed = []
    memory = conf.get("spark.driver.memory")
    if memory and f"-Xmx{memory}" not in jvm_arguments:
        missed.append("spark.driver.memory")
    options = shlex.split(conf.get("spark.driver.extraJavaOptions", ""))
    if not set(options) <= set(jvm_arguments):
        missed.append("spark.driver.extraJavaOptions")
    return missed


TEMP_DIR_OPTION = "-Djava.io.tmpdir="


@contextmanager
def driver_temp_dir_in_scratch() -> Iterator[None]:
    """Make the driver JVM's temp dir a scratch folder of this job, for the SparkContext the block makes.

    Spark's local dir (shuffle, spill and disk-cached blocks: copies of records) is the JVM's temp dir unless
    spark.local.dir or SPARK_LOCAL_DIRS names one, wherever they are set (spark-defaults.conf, --conf, the
    session's conf), so those still win; a temp dir given to the JVM (-Djava.io.tmpdir) is kept too. The JVM that
    PySpark starts in the block takes it through SPARK_SUBMIT_OPTS; spark-submit's JVM, running already, as a
    system property read when the SparkContext is made. A running SparkContext keeps its own.
    """
    if SparkContext._active_spark_context:
        yield
    elif launched_by_spark_submit():
        SparkContext._ensure_initialized()  # joins spark-submit's JVM
        jvm = SparkContext._jvm
        options = jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
        if not any(str(option).startswith(TEMP_DIR_OPTION) for option in options):
            jvm.java.lang.System.setProperty("java.io.tmpdir", temporary_scratch_dir("spark"))
        yield
    elif TEMP_DIR_OPTION in os.environ.get("SPARK_SUBMIT_OPTS", ""):
        yield
    else:
        option = f'"{TEMP_DIR_OPTION}{temporary_scratch_dir("spark")}"'  # quoted: the temp dir may hold a space
        with environment({"SPARK_SUBMIT_OPTS": f"{os.environ.get('SPARK_SUBMIT_OPTS', '')} {option}".strip()}):
            yield


_TEMPORARY_DIRS: list[tempfile.TemporaryDirectory[str]] = []


def temporary_scratch_dir(kind: str) -> str:
    """A fresh scratch dir that is removed when the process exits (or by the next job, if this one is killed), so no
    job leaves its Splink checkpoints or Spark's shuffle and spill files (copies of records) behind in the temp dir."""
    directory = ScratchDir(kind)
    _TEMPORARY_DIRS.append(directory)  # held until exit, when its finalizer removes it
    return directory.name


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set these environment variables inside the block only (for a child process started in it)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def silence_loggers_quoting_errors(spark: SparkSession) -> None:
    """Turn off the loggers that would print a failed task's error text (and so perhaps a value) to the job's log."""
    from pyspark.logger import PySparkLogger

    log4j = spark.sparkContext._jvm.org.apache.logging.log4j
    for name in JVM_LOGGERS_QUOTING_ERRORS:
        log4j.core.config.Configurator.setLevel(name, log4j.Level.OFF)
    for name in PYSPARK_LOGGERS_QUOTING_ERRORS:
        PySparkLogger.getLogger(name).disabled = True


def driver_jvm_summary(spark: SparkSession) -> str:
    """The driver JVM's heap ceiling, garbage collectors and class archive: whether spark-submit.json's
    settings and the Makefile's SPARK_SUBMIT_OPTS reached it."""
    jvm = spark.sparkContext._jvm
    heap_gib = jvm.java.lang.Runtime.getRuntime().maxMemory() / 2**30
    collectors = ", ".join(
        bean.getName() for bean in jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    )
    archives = ", ".join(mapped_class_archives(spark)) or "none"
    return f"driver JVM: max heap {heap_gib:.1f} GiB, garbage collectors {collectors}; class archive {archives}"


def mapped_class_archives(spark: SparkSession) -> list[str]:
    """The class-data-sharing archives (.jsa) the driver JVM has mapped, the JDK's own apart (Linux's /proc)."""
    jvm = spark.sparkContext._jvm
    maps = Path(f"/proc/{jvm.java.lang.ProcessHandle.current().pid()}/maps")
    if not maps.is_file():
        return []
    jdk = Path(jvm.java.lang.System.getProperty("java.home")).resolve()
    mapped = {Path(line.split()[-1]) for line in maps.read_text().splitlines() if line.endswith(".jsa")}
    return sorted(str(path) for path in mapped if not path.resolve().is_relative_to(jdk))


# How a stage with a small input plans, and Spark's defaults, which larger inputs get unless settings.conf
# says otherwise. spark.sql.codegen.factoryMode is an internal setting: NO_CODEGEN evaluates expressions
# interpreted, the path Spark itself falls back to when code generation fails, and compiles no class (at 10k
# demo records the pipeline took about 5 s less: benchmarks/RESULTS.md).
SMALL_INPUT_PLANNING = {
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}
LARGE_INPUT_PLANNING = {
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.codegen.wholeStage": "true",
    "spark.sql.codegen.factoryMode": "FALLBACK",
}


def size_stage_to_input(spark: SparkSession, settings: SparkConfig, rows: int) -> int:
    """Size the Spark SQL settings of a stage whose input has about `rows` rows; return its shuffle partitions.

    Shuffle partitions: one per settings.rows_per_shuffle_partition rows, at least one per core of the
    session (at most settings.shuffle_partitions) and at most settings.shuffle_partitions. AQE coalesces
    small post-shuffle partitions, but not inside persisted plans, where every empty partition of a
    small run would still cost a task.
    An input of at most settings.small_input_rows rows runs without adaptive query execution and code
    generation (whole-stage, and for single expressions too: SMALL_INPUT_PLANNING): on a few thousand rows,
    re-planning at every shuffle (a Spark job per shuffle stage) and compiling every plan with Janino cost
    more than they save. Larger inputs get them back, as settings.conf sets them (Spark's default: on).
    Its Delta writes are collected into the driver (delta_io.COLLECT_WRITES_CONF).
    """
    ceiling = settings.shuffle_partitions
    floor = min(spark.sparkContext.defaultParallelism, ceiling)
    partitions = min(ceiling, max(floor, math.ceil(rows / settings.rows_per_shuffle_partition)))
    spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    small = rows <= settings.small_input_rows
    for key, small_value in SMALL_INPUT_PLANNING.items():
        spark.conf.set(key, small_value if small else settings.conf.get(key, LARGE_INPUT_PLANNING[key]))
    spark.conf.set(delta_io.COLLECT_WRITES_CONF, str(small).lower())
    return partitions


@contextmanager
def persisting() -> Iterator[Callable[[DataFrame], DataFrame]]:
    """A `keep(df)` that persists DataFrames several writes share, unpersisted when the block ends however it ends."""
    kept: list[DataFrame] = []

    def keep(df: DataFrame) -> DataFrame:
        kept.append(df.persist())
        return kept[-1]

    try:
        yield keep
    finally:
        for df in kept:
            df.unpersist()


def run_at_once(spark: SparkSession, calls: Sequence[Callable[[], T]], workers: int | None = None) -> list[T]:
    """Each call's result, the calls run in up to `workers` threads at once (default: all); the error of the first
    call (in the order given) that failed is re-raised once all have ended.

    For independent steps that each wait on Spark or delta-rs (both leave the GIL), so one step's driver work
    overlaps another's tasks. Spark jobs started in the threads keep this thread's job group (the pipeline
    counts a stage's jobs by it).
    """
    in_job_group = inheritable_thread_target(spark)(lambda call: call())
    with ThreadPoolExecutor(max(1, workers or len(calls))) as pool:
        futures = [pool.submit(in_job_group, call) for call in calls]
    return [future.result() for future in futures]
