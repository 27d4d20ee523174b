"""Project exceptions. Each names the offending file, key, source or column, never a data value."""

from __future__ import annotations


class IdresError(ValueError):
    """Base class for every error this project raises on purpose."""


class ConfigError(IdresError):
    """One or more configuration problems, all reported at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"{len(self.problems)} configuration problem(s):\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


class SourceSchemaError(IdresError):
    """A source file is missing or its columns do not match the configured mapping."""

    def __init__(self, source: str, detail: str) -> None:
        self.source = source
        super().__init__(f"source '{source}': {detail}")


class ModelError(IdresError):
    """A saved Splink model does not fit the configured settings or engine."""

    def __init__(self, version: str, detail: str) -> None:
        self.version = version
        super().__init__(f"Splink model '{version}': {detail}")


class LakehouseBusyError(IdresError):
    """Another job held the lakehouse lock for longer than this job was configured to wait."""

    def __init__(self, lock_path: str, timeout_seconds: float) -> None:
        self.lock_path = lock_path
        self.timeout_seconds = timeout_seconds
        super().__init__(
            f"lakehouse lock {lock_path} is held by another idres job; gave up after {timeout_seconds:g} s "
            "(pipeline.yaml concurrency.lock_timeout_seconds). Nothing was written; rerun once the other job ends."
        )


class LakehouseLockUnsupportedError(IdresError):
    """The lakehouse's file system has no OS file lock (flock), so jobs cannot keep each other out safely."""

    def __init__(self, lock_path: str) -> None:
        self.lock_path = lock_path
        super().__init__(
            f"lakehouse lock {lock_path}: the file system does not support flock (a FUSE or SMB mount, NFS without "
            "its lock service?). Put the lakehouse on a file system that does: a lock held by a marker file outlives "
            "a killed job."
        )


class ColumnTypeChangeError(IdresError):
    """A write would change the type of columns a Delta table already holds, which a merge cannot do."""

    def __init__(self, table: str, retyped: dict[str, tuple[str, str]]) -> None:
        self.table = table
        self.retyped = dict(retyped)
        changes = ", ".join(f"{column} ({old} -> {new})" for column, (old, new) in self.retyped.items())
        super().__init__(
            f"Delta table {table}: the write changes the type of column(s) {changes}; nothing was committed. "
            "The table keeps rows of earlier runs, so its values must be migrated to the new type (or the change "
            "reverted) before it can take this run's rows."
        )


class ExpectationNotComputedError(RuntimeError):
    """Great Expectations could not compute an expectation (its Spark job or pandas step failed): not a verdict on
    the data, so the gate records no refusal and a retry validates again. Not an IdresError: like any failure it
    exits 1, its text (which may quote what the engine failed on) only in the incident file."""

    def __init__(self, suite: str, expectations: list[str], details: list[str]) -> None:
        self.suite = suite
        super().__init__(
            f"quality gate: suite {suite} could not compute {', '.join(expectations)}:\n" + "\n".join(details)
        )
