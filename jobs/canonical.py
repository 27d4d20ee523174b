"""The canonical raw customer schema that every source is mapped to at ingest."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
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

# A date of birth before this day, or after the day of the run, parses but cannot be real: ingest quarantines
# it, and the silver suite checks that none reached silver.
EARLIEST_BIRTH_DATE = date(1900, 1, 1)
# A phone as silver holds it: E.164, a country code and subscriber number of 7 to 15 digits in all.
# Standardize nulls a number libphonenumber accepts outside it (a short German service number, a number with
# an extension run into it), and the silver suite checks that every phone fits it.
# Regexes the silver suite runs on pandas (Python's re) and on Spark (Java's): written so both read them alike.
# Java's `$` also matches before a final \r, \u0085, \u2028 or \u2029 and Python's only before \n, so a
# pattern ends at END_OF_TEXT; Java's `\s` is ASCII and Python's Unicode, so a pattern names WHITESPACE.
END_OF_TEXT = r"(?![\s\S])"
WHITESPACE = r"\t\n\x0B\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
E164 = r"^\+[1-9][0-9]{6,14}" + END_OF_TEXT

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

# Silver attribute -> (the canonical columns it is derived from, the silver columns that hold it).
# The consent gate suppresses an attribute by nulling all of its columns; an attribute derived
# from a sensitive canonical column is never written to silver at all, except a pseudonym below.
SILVER_ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "first_name": (("first_name",), ("first_name_native", "first_name", "first_name_key")),
    "middle_name": (("middle_name",), ("middle_name_native", "middle_name")),
    "last_name": (("last_name",), ("last_name_native", "last_name", "last_name_key", "last_name_phonetic")),
    "date_of_birth": (("date_of_birth",), ("date_of_birth",)),
    "gender": (("gender",), ("gender",)),
    "email": (("email",), ("email", "email_valid")),
    "phone": (("phone", "country"), ("phone",)),
    "street": (("street",), ("street",)),
    "city": (("city",), ("city",)),
    "postcode": (("postcode",), ("postcode",)),
    "country": (("country",), ("country",)),
    "marketing_email": (("email",), ("marketing_email",)),
    "marketing_phone": (("phone", "country"), ("marketing_phone",)),
    "national_id_hash": (("national_id",), ("national_id_hash",)),
}

# Sensitive canonical column -> the silver attribute holding its keyed hash (HMAC-SHA256), written
# only when the policy lists the column under `pseudonymized_for_matching`. Splink can compare
# such a hash for equality; the raw value still never leaves bronze.
PSEUDONYM_ATTRIBUTES: dict[str, str] = {"national_id": "national_id_hash"}

SILVER_KEY_COLUMNS: tuple[str, ...] = ("source_system", "region", "source_record_id", "record_hash", "updated_at")

LAWFUL_BASES: tuple[str, ...] = (
    "consent",
    "contract",
    "legal_obligation",
    "vital_interest",
    "public_task",
    "legitimate_interest",
)
CONSENT_STATUSES: tuple[str, ...] = ("granted", "withdrawn", "denied")
SUBJECT: tuple[str, ...] = ("source_system", "source_record_id")  # a source record, as every table names it
# A record's id across sources (Splink's unique id, `--record` references): its source's name, this, its id in the
# source. Source names may not contain it (jobs.config), so the first one ends the name.
RECORD_ID_SEPARATOR = ":"

# Silver columns that only help matching (keys, a phonetic code, a syntax flag, a pseudonym): no profile value.
MATCHING_AID_COLUMNS: tuple[str, ...] = (
    "first_name_key",
    "last_name_key",
    "last_name_phonetic",
    "email_valid",
    "national_id_hash",
)

# Silver columns the comparisons and blocking rules read; nothing else is handed to Splink.
LINKAGE_COLUMNS = (
    "source_system",
    "first_name",
    "first_name_key",
    "last_name",
    "last_name_key",
    "last_name_native",
    "last_name_phonetic",
    "date_of_birth",
    "email",
    "phone",
    "postcode",
    "city",
    "street",
    "national_id_hash",  # present only when the policy pseudonymizes national ids; null otherwise
)
# The version of how standardize derives the LINKAGE_COLUMNS (name keys and phonetic codes, emails, phones, dates):
# a model's parameters describe the values it was trained on, so a change to that derivation is a bump here, and
# no model trained before it is reused (jobs.linkage.settings_hash). 2: name keys fold umlauts written out or dropped.
LINKAGE_DERIVATION_VERSION = 2


def subject_hash(
    source_system: Column | str = "source_system", source_record_id: Column | str = "source_record_id"
) -> Column:
    """The reference audit tables keep for a source record instead of its id: SHA-256 of "source:id"."""
    return F.sha2(
        F.concat_ws(
            ":",
            F.lit("idres-subject"),
            F.col(source_system) if isinstance(source_system, str) else source_system,
            F.col(source_record_id) if isinstance(source_record_id, str) else source_record_id,
        ),
        256,
    )


# Characters a value may carry at either end without meaning anything: every Unicode space separator (U+00A0,
# U+3000, ...), control character (tab, CR, ...) and format character (zero-width space, byte-order mark, ...).
# F.trim removes only U+0020.
EDGE_JUNK_CHARACTER = r"[\p{Z}\p{Cc}\p{Cf}]"
EDGE_JUNK = EDGE_JUNK_CHARACTER + "+"
# The trailing run is tried only where a run begins: tried at every character of a long inner run, each attempt
# would scan to the run's end, in time quadratic in its length.
_EDGE_RUNS = rf"\A{EDGE_JUNK}|(?<!{EDGE_JUNK_CHARACTER}){EDGE_JUNK_CHARACTER}++\z"


def trimmed(text: Column | str) -> Column:
    """text without the spaces, control and format characters at either end (see EDGE_JUNK), as a string."""
    value = (F.col(text) if isinstance(text, str) else text).cast("string")
    return F.regexp_replace(value, _EDGE_RUNS, "")


def lookup(mapping: Mapping[str, object]) -> Column:
    """A literal map column, for `lookup(m)[F.col(key)]`."""
    return F.create_map(*[F.lit(x) for kv in mapping.items() for x in kv])


def ranked_versions(bronze: DataFrame) -> DataFrame:
    """Bronze rows with `version_rank`, 1 for the current version of each source record: bronze keeps every version.

    The version its source updated last (`updated_at`) is current, whenever it was ingested; a version without
    an update time loses to a dated one. An update time after the version's ingestion cannot be real (a typo:
    2205 for 2025): the rows come back with it as the ingestion time (its latest possible value), but the version
    ranks as updated at the latest real update time ingested with or before it. So a real update that reaches
    bronze after it wins, and so does a correction of the typo (ranked at its ingestion time, the typo outranked
    both until an update was stamped after that). A typo in a record's first version ranks at its ingestion
    time: with nothing before it, a version dated earlier and ingested later may be a backfill of older history.
    Among versions updated at the same time (or all undated), the one ingested last wins, then the lowest record
    hash, so the choice never depends on the order of the rows.
    """
    record = Window.partitionBy("source_system", "source_record_id")
    typo = F.coalesce(F.col("updated_at") > F.col("ingested_at"), F.lit(False))
    real_so_far = record.orderBy("ingested_at").rangeBetween(Window.unboundedPreceding, Window.currentRow)
    real_before = F.max(F.when(~typo, F.col("updated_at"))).over(real_so_far)
    ranked_at = F.when(typo, F.coalesce(real_before, F.col("ingested_at"))).otherwise(F.col("updated_at"))
    newest = record.orderBy(F.col("_ranked_at").desc_nulls_last(), F.col("ingested_at").desc(), F.col("record_hash"))
    return (
        bronze.withColumn("_ranked_at", ranked_at)
        .withColumn("updated_at", F.when(typo, F.col("ingested_at")).otherwise(F.col("updated_at")))
        .withColumn("version_rank", F.row_number().over(newest))
        .drop("_ranked_at")
    )
