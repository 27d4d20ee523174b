"""The canonical raw customer schema that every source is mapped to at ingest."""

from __future__ import annotations

from pyspark.sql import types as T

# Column -> Spark type. Strings arrive as the source wrote them; typed columns are parsed
# at ingest with the source's own format, and a failed parse quarantines the row.
CANONICAL_FIELDS: dict[str, T.DataType] = {
    "source_record_id": T.StringType(),
    "first_name": T.StringType(),
    "middle_name": T.StringType(),
    "last_name": T.StringType(),
    "date_of_birth": T.DateType(),
    "gender": T.StringType(),
    "email": T.StringType(),
    "phone": T.StringType(),
    "street": T.StringType(),
    "city": T.StringType(),
    "postcode": T.StringType(),
    "country": T.StringType(),
    "national_id": T.StringType(),
    "health_note": T.StringType(),
    "updated_at": T.TimestampType(),
}

CANONICAL_COLUMNS: tuple[str, ...] = tuple(CANONICAL_FIELDS)
TYPED_COLUMNS: tuple[str, ...] = tuple(c for c, t in CANONICAL_FIELDS.items() if not isinstance(t, T.StringType))

# Lineage columns ingest adds to every bronze row.
LINEAGE_FIELDS: dict[str, T.DataType] = {
    "source_system": T.StringType(),
    "region": T.StringType(),
    "source_file": T.StringType(),
    "run_id": T.StringType(),
    "ingested_at": T.TimestampType(),
    "record_hash": T.StringType(),
}

BRONZE_COLUMNS: tuple[str, ...] = (
    "source_system",
    "region",
    *CANONICAL_COLUMNS,
    *(c for c in LINEAGE_FIELDS if c not in ("source_system", "region")),
)
