"""Data-subject requests (GDPR Art. 15 access, Art. 17 erasure), as a CLI and as the subject_requests DAG.

    python -m jobs.subject_rights export --record ua_crm:UA-1     # or --profile-id pr_...
    python -m jobs.subject_rights erase --profile-id pr_...

The subject is the given source records, or every source record of the given profile.
- export writes a JSON file of everything held about the subject: source records as landed, quarantined,
  standardized and admitted, consent events (landed and quarantined) and effective consent, profile values
  with their lineage (source record, rule, purpose, lawful basis), the record-to-profile assignments,
  permissions, and the match evidence that links the records; of its profiles, only what its own records
  supplied or decided (another record of the profile may be another person's).
- erase deletes the subject's rows from every table (bronze, quarantine, silver, consent ledger,
  gate audit, matches, gold), records the subject's hash in the erasure register (so neither ingest nor
  the consent gate lands its records or consent events again), re-resolves and re-unifies what the
  subject's records bridged (published when the gold suites of the quality gate pass it), deletes earlier
  access exports that quote its values, scans every file that the history purge keeps (the lakehouse and the
  reports) for the subject's distinguishing values, vacuums and drops the Delta history that still holds
  them, and writes an erasure certificate (hashes, tables, versions, time; no values). A retry of a failed
  erasure (same run id) reads the tables as its first attempt found them, so it erases and checks the same
  records and values; after the scan, the certificate waits under <lakehouse>/_erasures/ until the purge is
  done, so the next erasure (a retry, or any later one) finishes the purge from it. A rerun of a finished
  erasure returns its certificate. A --record that no table holds (a typo) fails the request.
Files go to <reports>/subject_requests/. Logs carry counts and hashes only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import delta_io, publication, quality_gate, resolve, unify
from jobs.canonical import RECORD_ID_SEPARATOR, SUBJECT, subject_hash
from jobs.config import PipelineConfig, TablePaths
from jobs.engines import open_engine
from jobs.errors import IdresError
from jobs.files import write_whole
from jobs.ingest import QUARANTINE_KEYS, json_id_fields, named_by_source
from jobs.profile_ids import ACTIVE, MERGED, PROFILE_ID_PATTERN, first_profile_id, retire_withdrawn, with_event_ids
from jobs.runner import INCIDENTS_DIR, job_arg_parser, run_job

log = logging.getLogger("idres.subject_rights")
JOB = "subject_rights"
REQUESTS_DIR = "subject_requests"  # under the reports folder: access exports and erasure certificates
PENDING_ERASURES_DIR = "_erasures"  # under the lakehouse: an erasure's certificate until its history purge is done

# Tables keyed by source record, and how their columns name it.
RECORD_TABLES = (
    "bronze",
    "quarantine",
    "silver",
    "consent_ledger",
    "consent_quarantine",
    "effective_consent",
    "admitted",
    "consent_audit",
    "record_profiles",
    "profile_sources",
    "profile_lineage",
)
MATCH_SIDES = ("record_id_l", "record_id_r")
# Silver/bronze columns whose values can identify a person; a shared value (a city) is not evidence.
IDENTIFYING = (
    "first_name",
    "middle_name",
    "last_name",
    "first_name_native",
    "middle_name_native",
    "last_name_native",
    "email",
    "phone",
    "street",
    "national_id",
    "health_note",
    "marketing_email",
    "marketing_phone",
)


@dataclass(frozen=True)
class Subject:
    records: DataFrame  # source_system, source_record_id, record_id
    profile_ids: tuple[str, ...]
    reference: str  # SHA-256 over the sorted subject hashes: names the subject in files and logs
    # Profiles the records held in an earlier version of gold/record_profiles and hold no more (merged, retired)
    former_profile_ids: tuple[str, ...] = ()
    # Of those and profile_ids, the ones other records held too (profiles_shared_with_others)
    shared_profile_ids: tuple[str, ...] = ()

    def every_profile_id(self) -> tuple[str, ...]:
        """The profiles the records hold and those they held before."""
        return (*self.profile_ids, *self.former_profile_ids)

    def record_ids(self) -> list[str]:
        """The records' unique ids (`source:id`), as Splink, the pairs and the access exports name them."""
        return [r["record_id"] for r in self.records.collect()]


def as_first_found(spark: SparkSession, path: Path, run_id: str) -> DataFrame:
    """The table as this run first found it: before its first commit of this job when an earlier attempt of the
    run made one (a retry after a failure), else as it is now."""
    version = delta_io.version_before_run(path, JOB, run_id)
    if version == -1:  # the first attempt created the table
        return delta_io.read_delta(spark, path).limit(0)
    return delta_io.read_delta(spark, path, version)


def find_subject(
    spark: SparkSession, cfg: PipelineConfig, records: Sequence[str], profile_id: str | None, run_id: str
) -> Subject:
    """The subject's source records: the given `source:id` references and every record of the given profile
    (as the run first found them, so a retried erasure finds the records its first attempt deleted)."""
    t = cfg.tables
    wanted = []
    for ref in records:
        source, sep, record_id = ref.partition(RECORD_ID_SEPARATOR)
        if not sep or not source or not record_id:
            raise IdresError("--record must be <source_system>:<source_record_id>")
        wanted.append((source, record_id))
    given = spark.createDataFrame(wanted, "source_system string, source_record_id string")
    unknown = len(set(wanted)) - held_records(spark, cfg, given, run_id) if wanted else 0
    if unknown:
        raise IdresError(
            f"{unknown} of the given record(s) are held in no table and not in the erasure register (source "
            "systems and record ids are case-sensitive); nothing was done"
        )
    if profile_id:
        if not delta_io.table_exists(t.record_profiles):
            raise IdresError("no record_profiles table: nothing is resolved yet")
        members = as_first_found(spark, t.record_profiles, run_id).where(F.col("profile_id") == profile_id)
        given = given.unionByName(members.select(*SUBJECT))
    # Held in memory, not as a plan over tables that the erasure is about to rewrite.
    rows = given.distinct().withColumn("h", subject_hash()).collect()
    subject = spark.createDataFrame(
        [(r["source_system"], r["source_record_id"], f"{r['source_system']}:{r['source_record_id']}") for r in rows],
        "source_system string, source_record_id string, record_id string",
    )
    if not rows:
        raise IdresError("the subject has no source records" + _ended_profile(cfg, profile_id))
    profile_ids: set[str] = {profile_id} if profile_id else set()
    held_before: set[str] = set()
    shared: list[str] = []
    if delta_io.table_exists(t.record_profiles):
        found = as_first_found(spark, t.record_profiles, run_id).join(subject, list(SUBJECT))
        profile_ids |= {r["profile_id"] for r in found.select("profile_id").distinct().collect()}
        history = delta_io.read_every_version(spark, t.record_profiles).select("profile_id", *SUBJECT)
        held = history.join(subject, list(SUBJECT))
        held_before = {r["profile_id"] for r in held.select("profile_id").distinct().collect()}
        held_before |= profiles_made_for(spark, cfg, [r["record_id"] for r in subject.select("record_id").collect()])
        shared = profiles_shared_with_others(history, subject, profile_ids | held_before)
    reference = hashlib.sha256("\n".join(sorted(r["h"] for r in rows)).encode()).hexdigest()
    return Subject(
        records=subject,
        profile_ids=tuple(sorted(profile_ids)),
        reference=reference,
        former_profile_ids=tuple(sorted(held_before - profile_ids)),
        shared_profile_ids=tuple(shared),
    )


def profiles_made_for(spark: SparkSession, cfg: PipelineConfig, record_ids: Sequence[str]) -> set[str]:
    """Ended profiles that the registry and identity events show were one of these records alone: created (or
    split off) with one record, under the id a new profile takes from its run and first record
    (profile_ids.new_profile_id), and given no records since (no `moved` into it, no profile `merged` into it).
    They outlive the purge of the tables' history that every erasure makes, where a subject's former profiles
    are otherwise found."""
    t = cfg.tables
    if not record_ids or not delta_io.table_exists(t.profile_registry) or not delta_io.table_exists(t.identity_events):
        return set()
    registry = delta_io.read_delta(spark, t.profile_registry).where(F.col("status") != ACTIVE)
    runs = [r["created_run_id"] for r in registry.select("created_run_id").distinct().collect()]
    candidates = [first_profile_id(run, record_id) for run in runs for record_id in record_ids]
    ended = [r["profile_id"] for r in registry.where(F.col("profile_id").isin(*candidates)).collect()] if runs else []
    if not ended:
        return set()
    events = delta_io.read_delta(spark, t.identity_events)
    made = events.where(F.col("profile_id").isin(*ended) & F.col("event_type").isin("created", "split"))
    alone = {
        r["profile_id"] for r in made.groupBy("profile_id").agg(F.sum("records").alias("n")).collect() if r["n"] == 1
    }
    inflow = events.where(
        ((F.col("event_type") == "moved") & F.col("profile_id").isin(*ended))
        | ((F.col("event_type") == MERGED) & F.col("related_profile_id").isin(*ended))
    )
    fed = {r["profile_id"] if r["event_type"] == "moved" else r["related_profile_id"] for r in inflow.collect()}
    return alone - fed


def _ended_profile(cfg: PipelineConfig, profile_id: str | None) -> str:
    """Why a profile id names no records, as the registry tells: merged into a successor, retired, or unknown."""
    path = cfg.tables.profile_registry
    if not profile_id or not delta_io.table_exists(path):
        return " (unknown profile id?)" if profile_id else ""
    columns = ["status", "successor_profile_id", "ended_run_id"]
    found = delta_io.rows_where(path, "profile_id", profile_id, columns)
    if not found:
        return f": profile {profile_id} was never issued"
    (row,) = found
    if row["status"] == "merged":
        return (
            f": profile {profile_id} was merged into {row['successor_profile_id']} by run {row['ended_run_id']}; "
            "name that profile (which may hold another person's records too) or the subject's records"
        )
    if row["status"] == "retired":
        return (
            f": profile {profile_id} was retired by run {row['ended_run_id']} (its records withdrawn or erased); "
            "name the subject's records"
        )
    return " (unknown profile id?)"


def held_records(spark: SparkSession, cfg: PipelineConfig, records: DataFrame, run_id: str) -> int:
    """How many of the distinct (source_system, source_record_id) records some record table holds (as the run
    first found it; a quarantined line holds every record it names) or the erasure register names: a reference
    that matches none is a typo, not a subject."""
    t = cfg.tables
    keys = records.select(*SUBJECT).distinct()
    tables = [getattr(t, name) for name in RECORD_TABLES if delta_io.table_exists(getattr(t, name))]
    held = [as_first_found(spark, path, run_id).select(*SUBJECT) for path in tables]
    for name, id_fields in quarantine_id_fields(cfg).items():
        if delta_io.table_exists(path := getattr(t, name)):
            named = named_by_source(F.col("raw_record"), id_fields)
            lines = as_first_found(spark, path, run_id)
            held.append(lines.select("source_system", F.explode(named).alias("source_record_id")))
    found = reduce(DataFrame.unionByName, held, keys.limit(0)).join(keys, list(SUBJECT), "left_semi").distinct()
    if delta_io.table_exists(t.erasure_register):
        register = as_first_found(spark, t.erasure_register, run_id).select("subject_hash")
        found = found.unionByName(
            keys.withColumn("subject_hash", subject_hash()).join(register, "subject_hash", "left_semi").select(*SUBJECT)
        )
    return found.distinct().count()


def _rows(df: DataFrame) -> list[dict[str, Any]]:
    return [r.asDict(recursive=True) for r in df.collect()]


def _table_rows(spark: SparkSession, path: Path, subject: Subject, by: str) -> list[dict[str, Any]]:
    if not delta_io.table_exists(path):
        return []
    df = delta_io.read_delta(spark, path)
    if by == "record" and set(SUBJECT) <= set(df.columns):
        return _rows(df.join(subject.records.select(*SUBJECT), list(SUBJECT)))
    if by == "profile" and "profile_id" in df.columns:
        return _rows(df.where(F.col("profile_id").isin(*subject.every_profile_id())))
    return []


def _withheld(row: dict[str, Any], columns: Iterable[str]) -> dict[str, Any]:
    return {k: None if k in columns else v for k, v in row.items()}


def quarantine_id_fields(cfg: PipelineConfig) -> dict[str, dict[str, str]]:
    """Each quarantine table (by name), with the id field by which its sources' JSON Lines text names records."""
    return {"quarantine": json_id_fields(cfg), "consent_quarantine": json_id_fields(cfg, consent=True)}


def subjects_lines(lines: DataFrame, subject: Subject, id_fields: Mapping[str, str]) -> DataFrame:
    """The quarantined lines (of a table read as lines) that are the subject's: held under one of its records,
    or naming one of them beside another record (joined records, jobs.ingest.named_record_ids)."""
    keys = subject.records.select(F.col("source_system").alias("_system"), F.col("source_record_id").alias("_id"))
    named = lines.withColumn("_named", named_by_source(F.col("raw_record"), id_fields))
    held_or_named = (F.col("source_system") == F.col("_system")) & (
        (F.col("source_record_id") == F.col("_id")) | F.coalesce(F.array_contains("_named", F.col("_id")), F.lit(False))
    )
    return named.join(F.broadcast(keys), held_or_named, "left_semi").drop("_named")


def names_no_record(id_fields: Mapping[str, str]) -> Column:
    """True for a quarantined line held under no record id (a row whose id was blank) whose text names no record
    either (jobs.ingest.named_by_source: a truncated JSONL line may still name its record's id)."""
    named = F.size(named_by_source(F.col("raw_record"), id_fields)) > 0
    return F.col("source_record_id").isNull() & ~F.coalesce(named, F.lit(False))


def unnamed_lines_quoting(lines: DataFrame, values: Iterable[str], id_fields: Mapping[str, str]) -> DataFrame:
    """The keys (QUARANTINE_KEYS) of the quarantined lines that name no record (names_no_record) and whose text
    quotes one of values as a whole value (scan_texts): values no other record holds, so the line is the
    subject's, though it names no record of it."""
    values = list(values)
    keys = lines.select(*QUARANTINE_KEYS).limit(0)
    if not values:
        return keys
    quoting = reduce(lambda a, b: a | b, [F.col("raw_record").contains(v) for v in values])
    unnamed = lines.where(names_no_record(id_fields) & quoting).select(*QUARANTINE_KEYS, "raw_record")
    found = [tuple(r[k] for k in QUARANTINE_KEYS) for r in unnamed.collect() if scan_texts([r["raw_record"]], values)]
    return keys.sparkSession.createDataFrame(found, keys.schema) if found else keys


def _quarantined_rows(
    spark: SparkSession, path: Path, subject: Subject, id_fields: Mapping[str, str], values: Iterable[str]
) -> list[dict[str, Any]]:
    """The subject's quarantined lines (subjects_lines) and those that name no record but quote one of the
    subject's distinguishing values (unnamed_lines_quoting, as its erasure deletes them), each with
    `raw_record_withheld`: a line that names several records, or none, keeps its reason, file and hash but not its
    text, which may hold another person's values (GDPR Art. 15(4))."""
    if not delta_io.table_exists(path):
        return []
    quarantine = delta_io.read_delta(spark, path)
    several = F.coalesce(F.size(named_by_source(F.col("raw_record"), id_fields)) > 1, F.lit(False))
    named = subjects_lines(quarantine, subject, id_fields).withColumn("raw_record_withheld", several)
    unnamed = quarantine.join(unnamed_lines_quoting(quarantine, values, id_fields), list(QUARANTINE_KEYS), "left_semi")
    lines = named.unionByName(unnamed.withColumn("raw_record_withheld", F.lit(True)))
    return _rows(lines.withColumn("raw_record", F.when(~F.col("raw_record_withheld"), F.col("raw_record"))))


def own_profile_rows(
    sections: dict[str, list[dict[str, Any]]],
    ids: set[str],
    profile_columns: Sequence[str],
    former_own: Iterable[str] = (),
) -> dict[str, list[dict[str, Any]]]:
    """The profile sections cut to what the subject's own records supplied or decided: a profile may hold records
    the request does not name (another person's, in an over-merge), whose values, ids and consent events are
    that person's. A profile value is kept when its lineage names one of the subject's records; the identity
    events whole of a profile the subject's records alone held, now or before (`former_own`)."""
    lineage = [r for r in sections["profile_values_lineage"] if r["record_id"] in ids]
    supplied = {(r["profile_id"], r["column"]) for r in lineage}
    sources = [r for r in sections["profile_sources"] if r["record_id"] in ids]
    match = ("best_match_record_id", "best_match_weight", "best_match_probability")
    # A decision another record made is that record's: only the profile's outcome (allowed or not) is the subject's.
    deciding = (
        "status",
        "lawful_basis",
        "deciding_source_system",
        "deciding_source_record_id",
        "deciding_event_id",
        "decided_at",
        "expires_at",
    )

    def own_sources(profile_id: str) -> list[dict[str, Any]]:
        return [r for r in sources if r["profile_id"] == profile_id]

    # Whole: the subject holds every record of the profile. Else the profile's latest update, and its identity
    # events (counts of all its records, the profiles they came from or went to), may be another person's.
    whole = {p["profile_id"] for p in sections["profiles"] if len(own_sources(p["profile_id"])) == p["record_count"]}
    whole |= set(former_own)

    def own_profile(profile: dict[str, Any]) -> dict[str, Any]:
        mine = own_sources(profile["profile_id"])
        regions, systems = sorted({r["region"] for r in mine}), sorted({r["source_system"] for r in mine})
        withheld = [c for c in profile_columns if (profile["profile_id"], c) not in supplied]
        if profile["profile_id"] not in whole:
            withheld.append("last_updated_at")
        return {
            **_withheld(profile, withheld),
            "regions": regions,
            "region_count": len(regions),
            "source_systems": systems,
            "record_count": len(mine),
        }

    return {
        "profiles": [own_profile(p) for p in sections["profiles"]],
        "identity_events": [
            r if r["profile_id"] in whole else _withheld(r, ("related_profile_id", "records"))
            for r in sections["identity_events"]
        ],
        "profile_values_lineage": lineage,
        "profile_sources": [r if r["best_match_record_id"] in ids else _withheld(r, match) for r in sources],
        "profile_permissions": [
            r
            if r["deciding_source_record_id"] is None
            or f"{r['deciding_source_system']}:{r['deciding_source_record_id']}" in ids
            else _withheld(r, deciding)
            for r in sections["profile_permissions"]
        ],
    }


def export_subject(spark: SparkSession, cfg: PipelineConfig, subject: Subject, run_id: str) -> dict[str, Any]:
    """Everything held about the subject, each profile value with its source record, purpose and lawful basis;
    of its profiles, only what its own records supplied (own_profile_rows)."""
    t = cfg.tables
    ids = subject.record_ids()
    id_fields = quarantine_id_fields(cfg)
    evidence = distinguishing_values(spark, cfg, subject, run_id)
    matches = []
    if delta_io.table_exists(t.pairwise_matches):
        pairs = delta_io.read_delta(spark, t.pairwise_matches)
        # Only pairs of the subject's own records: a pair with another person's record (one scored between the
        # match and the cluster threshold) would disclose that person's id and which of their values agree.
        matches = _rows(pairs.where(F.col("record_id_l").isin(*ids) & F.col("record_id_r").isin(*ids)))
    former_own = set(subject.former_profile_ids) - set(subject.shared_profile_ids)
    return {
        "subject_reference": subject.reference,
        "source_record_ids": sorted(ids),
        "profile_ids": list(subject.profile_ids),
        "former_profile_ids": list(subject.former_profile_ids),
        **own_profile_rows(
            {
                name: _table_rows(spark, getattr(t, table), subject, "profile")
                for name, table in (
                    ("profiles", "profiles"),
                    ("profile_values_lineage", "profile_lineage"),
                    ("profile_permissions", "profile_permissions"),
                    ("profile_sources", "profile_sources"),
                    ("identity_events", "identity_events"),
                )
            },
            set(ids),
            cfg.survivorship.columns,
            former_own,
        ),
        "match_evidence": matches,
        "record_profiles": _table_rows(spark, t.record_profiles, subject, "record"),
        "source_records_as_landed": _table_rows(spark, t.bronze, subject, "record"),
        "source_records_quarantined": _quarantined_rows(
            spark, t.quarantine, subject, id_fields["quarantine"], evidence
        ),
        "source_records_standardized": _table_rows(spark, t.silver, subject, "record"),
        "source_records_admitted": _table_rows(spark, t.admitted, subject, "record"),
        "consent_events": _table_rows(spark, t.consent_ledger, subject, "record"),
        "consent_events_quarantined": _quarantined_rows(
            spark, t.consent_quarantine, subject, id_fields["consent_quarantine"], evidence
        ),
        "effective_consent": _table_rows(spark, t.effective_consent, subject, "record"),
        "consent_gate_decisions": _table_rows(spark, t.consent_audit, subject, "record"),
    }


def distinguishing_values(spark: SparkSession, cfg: PipelineConfig, subject: Subject, run_id: str) -> set[str]:
    """The subject's identifying values that no other record holds, whole or as a word of a longer value: what
    must not survive erasure (read as the run first found bronze, quarantine and silver, so a retry checks for the
    values its first attempt deleted)."""

    def values(df: DataFrame) -> set[str]:
        columns = [c for c in IDENTIFYING if c in df.columns]
        if not columns:
            return set()
        exploded = df.select(F.explode(F.array(*[F.col(c).cast("string") for c in columns])).alias("v"))
        return {r["v"] for r in exploded.where(F.length("v") >= 3).distinct().collect()}

    def parsed(lines: DataFrame) -> DataFrame:  # the raw record as JSON (unparsable text holds no named values)
        raw_fields = ", ".join(f"`{c}` string" for c in IDENTIFYING)
        return lines.select(*SUBJECT, F.from_json("raw_record", raw_fields).alias("_raw")).select(*SUBJECT, "_raw.*")

    t = cfg.tables
    keys = subject.records.select(*SUBJECT)
    mine: set[str] = set()
    others: set[str] = set()
    others_lines = None  # the quarantined lines the erasure keeps
    for path in (t.bronze, t.quarantine, t.silver):
        if delta_io.table_exists(path):
            df = as_first_found(spark, path, run_id)
            theirs = df.join(keys, list(SUBJECT), "left_anti")
            if path == t.quarantine:  # a line naming the subject beside another record goes too (subjects_lines)
                id_fields = quarantine_id_fields(cfg)["quarantine"]
                subjects = subjects_lines(df, subject, id_fields)
                # A line that names no record is nobody's known record: it may be the subject's (unnamed_lines_quoting).
                theirs = df.join(subjects, list(QUARANTINE_KEYS), "left_anti").where(~names_no_record(id_fields))
                others_lines = theirs
                mine |= values(parsed(df.join(keys, list(SUBJECT))))
                others |= values(parsed(theirs))
            else:
                mine |= values(df.join(keys, list(SUBJECT)))
                others |= values(theirs)
    candidates = mine - others
    # A value held as a word of another record's (a first name in someone's street, a surname in a double-barrelled
    # one) is in data the erasure keeps, where the scan would find it and fail every attempt.
    candidates -= scan_texts(others, candidates)
    if candidates and others_lines is not None:
        # Another record's quarantined text that is no JSON (a CSV line) names no field, but holds its values too.
        quoting = reduce(lambda a, b: a | b, [F.col("raw_record").contains(v) for v in candidates])
        candidates -= scan_texts([r["raw_record"] for r in others_lines.where(quoting).collect()], candidates)
    return candidates


def value_pattern(values: Iterable[str]) -> tuple[re.Pattern[str], dict[str, str]] | None:
    """A regex of the values as whole values (not inside a longer word: `ivanov` is not in `ivanova`), each also as
    JSON escapes it, and the map from each form back to its value; None when there is no value."""
    forms = {}
    for value in filter(None, set(values)):
        for form in (value, json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1]):
            forms[form] = value
    if not forms:
        return None
    alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
    # Not beside a word character, nor beside a JSON escape (`\u0406` of an escaped longer word).
    return re.compile(rf"(?<!\w)(?<!\\u[0-9a-fA-F]{{4}})(?:{alternatives})(?!\w)(?!\\u[0-9a-fA-F]{{4}})"), forms


def _cell_texts(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        for item in value:
            yield from _cell_texts(item)
    elif value is not None:
        yield str(value)


def scan_texts(texts: Iterable[str], values: Iterable[str]) -> set[str]:
    """The values that any of texts holds as a whole value (see value_pattern)."""
    pattern = value_pattern(values)
    if pattern is None:
        return set()
    regex, forms = pattern
    return {forms[m] for text in texts for m in regex.findall(text)}


def scan_for_values(root: Path, values: Iterable[str], files: Iterable[Path] | None = None) -> dict[str, int]:
    """Files under root (or the given ones) holding any of values as a whole value: Parquet cell by cell (nested
    ones by their leaves, a JSON text cell as JSON escapes it), other files as text.

    Returns {path relative to root: number of values found}; an empty dict proves absence. A Parquet file that
    cannot be read (cut short by a killed writer) is listed with 0: nothing proves it holds none.
    """
    pattern = value_pattern(values)
    hits: dict[str, int] = {}
    if pattern is None:
        return hits
    regex, forms = pattern
    for f in sorted(files if files is not None else (p for p in root.rglob("*") if p.is_file())):
        if f.suffix == ".parquet":
            try:
                columns = pq.read_table(f).columns
            except (pa.ArrowException, OSError):
                hits[_path_under(f, root)] = 0
                continue
            text = "\n".join(t for column in columns for t in _cell_texts(column.to_pylist()))
        else:
            text = f.read_bytes().decode("utf-8", errors="replace")
        found = {forms[m] for m in regex.findall(text)}
        if found:
            hits[_path_under(f, root)] = len(found)
    return hits


def _path_under(file: Path, root: Path) -> str:
    """file's path relative to root, also through a symlink or `..` in either (delta-rs names a table's files by
    their canonical paths); the whole path when it is not under root."""
    for f, r in ((file, root), (file.resolve(), root.resolve())):
        if f.is_relative_to(r):
            return str(f.relative_to(r))
    return str(file)


def files_kept_by_purge(root: Path, tables: Iterable[Path]) -> list[Path]:
    """Every file under root that purging the tables' history keeps: each table's current data files, and all
    that is not a table's. A table's log is written anew from its current version, and the rest is deleted."""
    purged = [Path(t) for t in tables if delta_io.table_exists(t)]
    kept = [f for f in root.rglob("*") if f.is_file() and not any(t in f.parents for t in purged)]
    return kept + [f for t in purged for f in delta_io.current_data_files(t)]


def lasting_checkpoint_dir(cfg: PipelineConfig) -> Path | None:
    """The configured spark.checkpoint.dir when it is on this machine's file system, else None. Spark jobs drop
    Splink's tables there when they end (jobs.engines.drop_splink_checkpoints); a killed one leaves them."""
    configured = cfg.spark.conf.get("spark.checkpoint.dir")
    location = urlparse(configured) if configured else None
    return Path(location.path) if location and location.scheme in ("", "file") else None


def _remove_files_quoting(folder: Path, values: Iterable[str]) -> int:
    """Delete the files under folder that hold any of values; returns how many."""
    quoting = scan_for_values(folder, values) if folder.is_dir() else {}
    for name in quoting:
        (folder / name).unlink()
    return len(quoting)


def _remove_exports_of(folder: Path, record_ids: Iterable[str], values: Iterable[str]) -> int:
    """Delete the earlier access exports that hold the subject: those that list one of its records (found by id,
    so a subject whose only copy was a quarantined CSV line, whose text names no field, finds its export too) and
    those that quote one of its values; returns how many."""
    ids = set(record_ids)

    def lists_the_subject(export: Path) -> bool:
        try:
            listed = json.loads(export.read_text(encoding="utf-8")).get("source_record_ids") or []
            return bool(ids & set(listed))
        except (ValueError, AttributeError, TypeError):  # not an export as written (cut short, edited): left to
            return False  # the value scan, as any other file

    listing = [f for f in (folder.glob("export-*.json") if folder.is_dir() else []) if lists_the_subject(f)]
    for f in listing:
        f.unlink()
    return len(listing) + _remove_files_quoting(folder, values)


def _remove_splink_tables_quoting(checkpoints: Path, values: Iterable[str]) -> int:
    """Delete, whole, the Splink tables that a killed Spark job left in the checkpoint dir (`__splink__*`
    folders in it or in an application's folder in it) and that hold any of values, or a file that cannot be read
    (cut short by the kill); returns how many. Nothing else there is touched: the folder may be shared with other
    applications."""
    values = list(values)
    tables = [t for t in (*checkpoints.glob("__splink__*"), *checkpoints.glob("*/__splink__*")) if t.is_dir()]
    quoting = [t for t in tables if scan_for_values(t, values)]
    for table in quoting:
        shutil.rmtree(table)
    return len(quoting)


def _erased_before(spark: SparkSession, t: TablePaths, subject: Subject, run_id: str) -> list[str]:
    """The runs that put the subject's records in the erasure register before this run (as first found) when
    every record is there, else none."""
    if not delta_io.table_exists(t.erasure_register):
        return []
    hashes = subject.records.select(subject_hash().alias("subject_hash"))
    registered = hashes.join(as_first_found(spark, t.erasure_register, run_id), "subject_hash").collect()
    return sorted({r["run_id"] for r in registered}) if len(registered) == hashes.count() else []


def admitted_records_published(cfg: PipelineConfig) -> bool:
    """Whether a publication came after the consent gate's last run, so that the admitted records are those of a
    run the quality gate passed (less erased subjects), not those of one it refused or that stopped before it."""
    t = cfg.tables
    published = delta_io.latest_time(t.unify_runs, "unified_at")
    landed = delta_io.latest_time(t.consent_runs, "landed_at")
    return published is not None and (landed is None or published > landed)


def profiles_shared_with_others(history: DataFrame, records: DataFrame, profile_ids: Iterable[str]) -> list[str]:
    """Of the subject's profiles, present and former, those that held other records too in some retained version
    of gold/record_profiles (history: its rows of every version): their ids and history are the other records'
    people's as well, so the erasure keeps them in the registry and identity events."""
    wanted = sorted(profile_ids)
    if not wanted:
        return []
    members = history.where(F.col("profile_id").isin(*wanted))
    others = members.join(records, list(SUBJECT), "left_anti").select("profile_id").distinct()
    return sorted(r["profile_id"] for r in others.collect())


def retire_withdrawn_profiles(
    spark: SparkSession, cfg: PipelineConfig, profile_ids: Sequence[str], run_id: str
) -> None:
    """Retire the withdrawn profiles in the registry, each with its identity event, as a resolve retires a profile
    no record holds: their ids stay issued and say what became of them (the next run gives the records new ids)."""
    t = cfg.tables
    if not profile_ids or not delta_io.table_exists(t.profile_registry):
        return
    now = delta_io.run_time(datetime.now(UTC), [(t.identity_events, "event_at"), (t.profile_registry, "created_at")])
    job = {"run_id": run_id, "job": JOB}
    with open_engine(spark, "duckdb") as db:
        withdrawn = db.register("withdrawn", pa.table({"profile_id": pa.array(profile_ids, pa.string())}))
        registry, events = retire_withdrawn(db, db.read_delta("registry", t.profile_registry), withdrawn, run_id, now)
        events = with_event_ids(db, events, now)
        delta_io.merge_delta(
            db.write_source(registry), t.profile_registry, keys=("profile_id",), update_changed=True, **job
        )
        delta_io.merge_delta(db.write_source(events), t.identity_events, keys=("event_id",), **job)


def republish_without_subject(
    spark: SparkSession, cfg: PipelineConfig, subject: Subject, run_id: str, shared: Sequence[str] = ()
) -> str:
    """Re-cluster what the subject's records bridged and publish it when the gold suites pass it; returns what
    happened, for the certificate.

    The admitted records are resolved as they are now, when they are the published run's (less the subject): the
    gold suites do not check what the bronze, silver and consent suites do, and the erasure, which deletes rows
    from those tables, could not pass them. When the consent gate ran after the last publication (a run the
    quality gate refused, or one that stopped before it), or the gold suites refuse the re-resolution, nothing of
    it is published, and the subject's profiles are withdrawn from gold whole (their other records' assignments,
    sources and lineage), so no published row refers to a deleted profile; those `shared` with other records are
    retired. The next run that passes the gate gives those records profiles again.
    """
    t = cfg.tables
    if admitted_records_published(cfg):
        resolve.run(spark, cfg, run_id=run_id)
        unify.run(spark, cfg, run_id=run_id)
        outcome = quality_gate.validate(
            quality_gate.gold_checks(spark, cfg), run_id, pandas_max_rows=cfg.quality.pandas_max_rows
        )
        if outcome.success:
            publication.publish(cfg, run_id=run_id)
            return "published: the gold suites passed it"
        log.warning("erasure %s: re-resolution not published; %d expectation(s) failed", run_id, len(outcome.failed))
        refusal = f"{len(outcome.failed)} expectation(s) of the gold suites failed (" + "; ".join(outcome.failed) + ")"
    else:
        log.warning("erasure %s: not re-resolved: the consent gate's last run was not published", run_id)
        refusal = (
            "not re-resolved, as the consent gate's last run was not published (the quality gate refused it, or it "
            "stopped before the gate)"
        )
    job = {"run_id": run_id, "job": JOB}
    if subject.profile_ids:
        profiles = spark.createDataFrame([(p,) for p in subject.profile_ids], "profile_id string")
        for name in ("record_profiles", "profile_sources", "profile_lineage"):
            delta_io.delete_matching(profiles, getattr(t, name), **job)
        retire_withdrawn_profiles(spark, cfg, [p for p in shared if p in subject.profile_ids], run_id)
    return f"not published: {refusal}; the subject's profiles are withdrawn until a run passes the quality gate"


def erase_subject(
    spark: SparkSession, cfg: PipelineConfig, subject: Subject, run_id: str, request: str = ""
) -> dict[str, Any]:
    """Delete the subject everywhere, re-resolve what it bridged, purge history, prove it (in the lakehouse and
    the reports, earlier access exports removed), and certify (request: request_sha256 of what was asked)."""
    t = cfg.tables
    exports = cfg.reports / REQUESTS_DIR
    job = {"run_id": run_id, "job": JOB}
    evidence = distinguishing_values(spark, cfg, subject, run_id)
    shared = subject.shared_profile_ids
    if not evidence and (erased_by := _erased_before(spark, t, subject, run_id)):
        # Its earlier access exports are found by record id, with no value to hand: removed before giving up.
        if removed := _remove_exports_of(exports, subject.record_ids(), ()):
            log.info("erasure %s: removed %d access export(s) of the subject erased before", run_id, removed)
        unfinished = [r for r in erased_by if certificate_of_run(cfg, r) is None]
        if run_id in unfinished:  # this run's own earlier attempt, whose history a later erasure purged
            advice = (
                "; a later erasure purged the tables' history this retry would read the values from, and its scan "
                "is the last one made: check the files this run's failed attempt named by hand"
            )
        elif unfinished:
            advice = f"; run {', '.join(unfinished)} wrote no certificate: retry it with its run id"
        else:
            advice = " (see that run's certificate)"
        raise IdresError(
            f"subject {subject.reference} is in the erasure register already (erased by run {', '.join(erased_by)}) "
            "and none of its values is held any more, so there is nothing left to erase or to scan for" + advice
        )
    at = datetime.now(UTC).replace(microsecond=0)
    register = subject.records.select(
        subject_hash().alias("subject_hash"),
        F.lit(run_id).alias("run_id"),
        F.lit(at).cast("timestamp").alias("erased_at"),
    )
    claim = _request_claim(cfg, run_id)  # before the first change: another request under this run id is refused
    claim.parent.mkdir(exist_ok=True)
    write_whole(claim, request)
    delta_io.merge_delta(register, t.erasure_register, keys=("subject_hash",), **job)

    erased_from = [*RECORD_TABLES, "pairwise_matches"]
    keys = subject.records.select(*SUBJECT)
    for name in RECORD_TABLES:
        delta_io.delete_matching(keys, getattr(t, name), **job)
    for name, id_fields in quarantine_id_fields(cfg).items():  # the lines that name the subject beside another
        if delta_io.table_exists(path := getattr(t, name)):
            found = as_first_found(spark, path, run_id)
            lines = subjects_lines(found, subject, id_fields).select(*QUARANTINE_KEYS)
            unnamed = unnamed_lines_quoting(found, evidence, id_fields)
            delta_io.delete_matching(lines.unionByName(unnamed), path, **job)
    ids = subject.records.select("record_id")
    for side in MATCH_SIDES:
        delta_io.delete_matching(ids.withColumnRenamed("record_id", side), t.pairwise_matches, **job)
    if subject.profile_ids:
        profiles = spark.createDataFrame([(p,) for p in subject.profile_ids], "profile_id string")
        for name in ("profiles", "profile_permissions"):
            erased_from.append(name)
            delta_io.delete_matching(profiles, getattr(t, name), **job)

    re_resolution = "nothing resolved yet"
    if delta_io.table_exists(t.admitted) and delta_io.table_exists(t.record_profiles):
        re_resolution = republish_without_subject(spark, cfg, subject, run_id, shared)
    publication.drop_staging(cfg)  # candidates of an earlier, failed gate hold the subject too
    own = sorted(set(subject.every_profile_id()) - set(shared))  # profiles of the subject's records alone
    if own and delta_io.table_exists(t.record_profiles):
        remaining = delta_io.read_delta(spark, t.record_profiles).select("profile_id").distinct()
        gone = spark.createDataFrame([(p,) for p in own], "profile_id string").join(
            remaining, "profile_id", "left_anti"
        )
        for name in ("profile_registry", "identity_events"):
            erased_from.append(name)
            delta_io.delete_matching(gone, getattr(t, name), **job)
    # Counted from the tables' logs: what every attempt of this run deleted (a retry finds deleted what its first
    # attempt did), the withdrawal of a refused re-resolution's profiles with it.
    deleted = {name: delta_io.run_rows_deleted(getattr(t, name), JOB, run_id) for name in erased_from}

    # A failed job's incident file (jobs.runner.record_incident) and an earlier access export of the subject
    # (or of a profile it belonged to) quote its values too, and so do the Splink tables a killed Spark job left
    # in a lasting checkpoint dir (the lakehouse lock this job holds keeps every other job of it away).
    checkpoints = lasting_checkpoint_dir(cfg)
    incidents_removed = _remove_files_quoting(cfg.lakehouse / INCIDENTS_DIR, evidence)
    record_ids = subject.record_ids()
    exports_removed = _remove_exports_of(exports, record_ids, evidence)
    # A Splink table names the records it holds by their unique ids (source:id), which find it without a value.
    splink_tables_removed = _remove_splink_tables_quoting(checkpoints, [*evidence, *record_ids]) if checkpoints else 0
    log.info(
        "erasure %s: removed %d incident file(s), %d access export(s), %d Splink table(s)",
        run_id,
        incidents_removed,
        exports_removed,
        splink_tables_removed,
    )
    # Scanned before the purge, which deletes files and writes value-free logs only, so from here on the erasure
    # needs no value: a retry after a kill in the purge finishes it from the pending certificate.
    kept = {
        cfg.lakehouse: files_kept_by_purge(cfg.lakehouse, t.all().values()),
        cfg.reports: [f for f in cfg.reports.rglob("*") if f.is_file()],
    }
    holding = [str(root / name) for root, files in kept.items() for name in scan_for_values(root, evidence, files)]
    if holding:
        raise IdresError(
            f"erasure incomplete: {len(holding)} file(s) still hold values of subject {subject.reference} "
            f"({', '.join(holding[:5])}); remove or fix them and retry"
        )
    certificate = {
        "certificate": "erasure",
        "subject_reference": subject.reference,
        "source_records_erased": subject.records.count(),
        "profile_ids": list(subject.profile_ids),
        "former_profile_ids": list(subject.former_profile_ids),
        "rows_deleted": deleted,
        "re_resolution": re_resolution,
        "history": "vacuumed with 0 h retention; Delta log before the erasure checkpoint removed",
        "incident_files_removed": incidents_removed,
        "export_files_removed": exports_removed,
        "checkpoint_splink_tables_removed": splink_tables_removed,
        "scan": {"files": sum(map(len, kept.values())), "values_checked": len(evidence), "hits": len(holding)},
        "run_id": run_id,
        "request_sha256": request,
        "erased_at": at.isoformat(),
    }
    pending = _pending_erasure(cfg, run_id)
    pending.parent.mkdir(exist_ok=True)
    write_whole(pending, json.dumps(certificate, sort_keys=True))
    return purge_erased_history(cfg, certificate, evidence)


def _pending_erasure(cfg: PipelineConfig, run_id: str) -> Path:
    """Where an erasure keeps its certificate, values-free, from its scan until its history purge is done."""
    return cfg.lakehouse / PENDING_ERASURES_DIR / f"{hashlib.sha256(run_id.encode()).hexdigest()[:20]}.json"


def _request_claim(cfg: PipelineConfig, run_id: str) -> Path:
    """Where an erasure keeps its request's hash (request_sha256) from its first change until its certificate."""
    return _pending_erasure(cfg, run_id).with_suffix(".request")


def purge_erased_history(
    cfg: PipelineConfig, certificate: dict[str, Any], evidence: Iterable[str] = ()
) -> dict[str, Any]:
    """Purge every table's history, check that no earlier version's file is left (and, when the values are at
    hand, that no log the purge wrote holds one), and complete the certificate."""
    job = {"run_id": certificate["run_id"], "job": JOB}
    tables = {name: path for name, path in cfg.tables.all().items() if delta_io.table_exists(path)}
    versions = {name: delta_io.purge_history(path, **job) for name, path in tables.items()}
    # Vacuum leaves what is hidden at a table's top (a `_temporary` folder another writer left): named, to remove.
    left = [
        str(f.relative_to(cfg.lakehouse)) for path in tables.values() for f in delta_io.files_of_earlier_versions(path)
    ]
    logs = [f for path in tables.values() for f in (path / "_delta_log").rglob("*") if f.is_file()]
    hits = len(scan_for_values(cfg.lakehouse, evidence, logs))
    if left or hits:
        raise IdresError(
            f"erasure incomplete: {len(left)} file(s) of earlier versions left ({', '.join(left[:5])}), {hits} log "
            f"file(s) holding values of subject {certificate['subject_reference']}; remove the files and retry"
        )
    return {**certificate, "table_versions_after": versions}


def request_sha256(records: Sequence[str], profile_id: str | None) -> str:
    """SHA-256 of an erasure request (its records and profile id, in any order): a certificate carries it, so a
    run id reused for another subject is told apart from a rerun of the same request."""
    return hashlib.sha256(json.dumps([sorted(set(records)), profile_id or None]).encode()).hexdigest()


def certificate_of_run(cfg: PipelineConfig, run_id: str) -> Path | None:
    """The erasure certificate run_id wrote, if it finished."""
    for path in sorted((cfg.reports / REQUESTS_DIR).glob("erasure-*.json")):
        if json.loads(path.read_text(encoding="utf-8")).get("run_id") == run_id:
            return path
    return None


def finish_pending_erasures(cfg: PipelineConfig) -> dict[str, Path]:
    """Finish the history purge of every erasure killed in it, whatever its run id (its values are gone, its
    certificate waits under _erasures/); returns run id -> certificate written."""
    folder = cfg.lakehouse / PENDING_ERASURES_DIR
    finished = {}
    for pending in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        certificate = purge_erased_history(cfg, json.loads(pending.read_text(encoding="utf-8")))
        path = write_report(cfg, "erasure", certificate["subject_reference"], certificate)
        pending.unlink()
        pending.with_suffix(".request").unlink(missing_ok=True)  # its _request_claim
        log.info("erase of run %s finished from its pending certificate: %s", certificate["run_id"], path)
        finished[certificate["run_id"]] = path
    return finished


def write_report(cfg: PipelineConfig, kind: str, reference: str, content: dict[str, Any]) -> Path:
    """Write content as <reports>/subject_requests/<kind>-<subject ref>-<UTC time>.json, whole (jobs.files); a
    certificate is sealed with the SHA-256 of its own content, and an access export, a dossier of personal data,
    is readable by its owner only."""
    folder = cfg.reports / REQUESTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    body = json.dumps(content, default=str, ensure_ascii=False, indent=2, sort_keys=True)
    if kind == "erasure":
        content = {**content, "certificate_sha256": hashlib.sha256(body.encode()).hexdigest()}
        body = json.dumps(content, default=str, ensure_ascii=False, indent=2, sort_keys=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{kind}-{reference[:16]}-{stamp}.json"
    return write_whole(path, body + "\n", private=kind == "export")


def run(
    spark: SparkSession,
    cfg: PipelineConfig,
    run_id: str,
    action: str,
    record: Sequence[str] | None = None,
    profile_id: str | None = None,
) -> Path:
    """Carry out one subject request; returns the file written (export or erasure certificate)."""
    publication.finish_interrupted_publication(cfg)  # the subject is found in, and erased from, whole tables
    records = [r for r in (record or []) if r]
    if not records and not profile_id:
        raise IdresError("name the subject with --record <source:id> (repeatable) or --profile-id")
    if profile_id and not re.fullmatch(PROFILE_ID_PATTERN, profile_id):  # a space or CR copied with it, a name
        raise IdresError("--profile-id is not a profile id: pr_ and 20 hexadecimal digits, with nothing around them")
    pending = _pending_erasure(cfg, run_id)
    claim = _request_claim(cfg, run_id)
    request = request_sha256(records, profile_id)
    if action == "erase":
        done = certificate_of_run(cfg, run_id) or finish_pending_erasures(cfg).get(run_id)
        if done is not None:  # a rerun of a finished erasure, or a retry of one killed in its purge
            pending.unlink(missing_ok=True)
            claim.unlink(missing_ok=True)
            if json.loads(done.read_text(encoding="utf-8")).get("request_sha256", request) != request:
                raise IdresError(
                    f"run id {run_id} has erased another subject already (certificate {done.name}); give this "
                    "request a run id of its own"
                )
            log.info("erase of run %s is done; its certificate: %s", run_id, done)
            return done
        if claim.is_file() and claim.read_text(encoding="utf-8") != request:
            raise IdresError(
                f"run id {run_id} is erasing another subject (an earlier attempt did not finish): retry that "
                "request under it, and give this one a run id of its own"
            )
    subject = find_subject(spark, cfg, records, profile_id or None, run_id)
    if action == "export":
        path = write_report(cfg, "export", subject.reference, export_subject(spark, cfg, subject, run_id))
    elif action == "erase":
        certificate = erase_subject(spark, cfg, subject, run_id, request)
        path = write_report(cfg, "erasure", subject.reference, certificate)
        pending.unlink()
        claim.unlink()
    else:
        raise IdresError(f"unknown action '{action}' (export or erase)")
    log.info("%s for subject %s written to %s", action, subject.reference, path)
    return path


def arg_parser() -> argparse.ArgumentParser:
    parser = job_arg_parser("idres data-subject requests: export (access) or erase (erasure)")
    parser.add_argument("action", choices=("export", "erase"))
    parser.add_argument("--record", action="append", help="<source_system>:<source_record_id>; repeatable")
    parser.add_argument("--profile-id", help="every source record of this profile")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    return run_job(JOB, run, argv, arg_parser())


if __name__ == "__main__":
    # Call through the package module, so Spark pickles its functions by reference, not as __main__'s.
    from jobs.subject_rights import main as job_main

    job_main()
