"""The staged tables resolve and unify write (gold/profiles apart, whose own suite checks its columns against the
survivorship): exactly the columns those jobs write. A column beyond them, such as an email carried into
profile_sources, would be published with no lineage or consent check on it."""

from __future__ import annotations

from pyspark.sql import DataFrame

from expectations import QualityInputs, TableCheck, must_hold
from jobs.profile_ids import IDENTITY_EVENTS_SCHEMA, REGISTRY_SCHEMA
from jobs.resolve import PAIRS_SCHEMA, RECORD_PROFILES_COLUMNS
from jobs.unify import PROFILE_LINEAGE_COLUMNS, PROFILE_PERMISSIONS_COLUMNS, PROFILE_SOURCES_COLUMNS

WRITTEN_COLUMNS: dict[str, tuple[str, ...]] = {
    "pairwise_matches": tuple(PAIRS_SCHEMA.names),
    "record_profiles": RECORD_PROFILES_COLUMNS,
    "profile_registry": tuple(REGISTRY_SCHEMA.names),
    "identity_events": tuple(IDENTITY_EVENTS_SCHEMA.names),
    "profile_sources": PROFILE_SOURCES_COLUMNS,
    "profile_lineage": PROFILE_LINEAGE_COLUMNS,
    "profile_permissions": PROFILE_PERMISSIONS_COLUMNS,
}


LEVEL_TYPES = frozenset({"tinyint", "smallint", "int", "bigint"})


def comparison_levels(pairs: DataFrame) -> set[str]:
    """The pairs' `gamma_<comparison>` columns of integer comparison levels, one per comparison of conf/splink.yaml."""
    return {name for name, dtype in pairs.dtypes if name.startswith("gamma_") and dtype in LEVEL_TYPES}


def with_column_checks(inputs: QualityInputs) -> DataFrame:
    """One row: `<table>_columns_as_written`, whether the table's columns are those WRITTEN_COLUMNS names for it (in
    any order; the pairs also with their comparison levels), for each of its tables. From the tables' schemas: no
    row is read."""
    flags = {}
    for name, columns in WRITTEN_COLUMNS.items():
        table = getattr(inputs, name)
        levels = comparison_levels(table) if name == "pairwise_matches" else set()
        flags[f"{name}_columns_as_written"] = set(table.columns) - levels == set(columns)
    schema = ", ".join(f"{flag} boolean" for flag in flags)
    return inputs.profiles.sparkSession.createDataFrame([tuple(flags.values())], schema)


def checks(inputs: QualityInputs) -> list[TableCheck]:
    return [
        TableCheck(
            suite="gold_columns",
            table="gold (staged)",
            frame=with_column_checks(inputs),
            expectations=[
                must_hold(f"{name}_columns_as_written", f"{name} holds the columns its job writes and no other")
                for name in WRITTEN_COLUMNS
            ],
        )
    ]
