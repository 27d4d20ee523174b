"""PySpark's Python worker daemon, started without Spark's own archives on the module path when it can be.

Spark puts pyspark.zip, py4j's zip and the spark-core jar on every Python worker's path. Each new worker
adds its SparkFiles folder to sys.path and so calls importlib.invalidate_caches(), which on Python 3.11
re-reads the whole directory of every archive once per zip importer (the jar holds thousands of entries):
about 2 s of CPU per worker, the larger part of a small run's Python time. Where pyspark and py4j are
installed in the interpreter, as this project installs them, the archives are redundant, and this daemon
drops them before pyspark is imported. Workers are forked from it and inherit its path.
Set as `spark.python.daemon.module` by jobs.spark_session.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from importlib.machinery import PathFinder

SPARK_ARCHIVE = re.compile(r"(^|/)(pyspark\.zip|py4j-[^/]*\.zip|spark-core_[^/]*\.jar)$")


def without_spark_archives(path: Sequence[str]) -> list[str]:
    """path without Spark's pyspark, py4j and spark-core archives, if pyspark and py4j import without them."""
    kept = [entry for entry in path if not SPARK_ARCHIVE.search(entry)]
    if all(PathFinder.find_spec(package, kept) is not None for package in ("pyspark", "py4j")):
        return kept
    return list(path)


def drop_spark_archives() -> None:
    """Take Spark's archives off sys.path, and their importers, which finding this module created, out of
    sys.path_importer_cache, whose every entry importlib.invalidate_caches() refreshes."""
    kept = without_spark_archives(sys.path)
    for entry in set(sys.path) - set(kept):
        sys.path_importer_cache.pop(entry, None)
    sys.path[:] = kept


if __name__ == "__main__":
    drop_spark_archives()
    from pyspark.daemon import manager

    manager()
