"""Consent gate: the consent ledger, effective consent as of the run's cutoff, and the gate itself.

Only records with a granted, unexpired lawful basis for profile unification go on to identity
resolution; the others are not even used for matching. Admitted records keep only the
attributes their granted purposes allow. Every decision (admitted, excluded, attribute
suppressed) is written to an audit table that holds references, reason codes and the policy
version, never a personal value.

Effective consent, per subject (source system + source record id) and purpose, is the latest
live event by event_time at or before the cutoff: a grant whose expires_at is at or before the
cutoff has lapsed and decides only when every event has, as `expired` (a withdrawal followed by a
lapsed grant stays withdrawn). Ties on event_time are broken so that withdrawal wins: withdrawn,
then denied, then granted; then the later recorded_at, then event_id, then the event's other
fields. Exact duplicate events count once, so the result does not depend on the order or
repetition of events.
"""

from __future__ import annotations

import argparse
import logging
import re
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import reduce

import pyarrow as pa
from pyspark.sql import Column, DataFrame, Row, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import delta_io
from jobs.canonical import CONSENT_STATUSES, LAWFUL_BASES, SILVER_ATTRIBUTES, SUBJECT, lookup
from jobs.config import CONSENT_FEED_COLUMNS, PipelineConfig, PurposePolicy, SourceConfig
from jobs.engines import sql_string
from jobs.errors import IdresError
from jobs.ingest import (
    BAD_ENCODING,
    CORRUPT,
    MALFORMED_RECORD,
    QUARANTINE_KEYS,
    REASON,
    SOURCE_FILE,
    UNDECODABLE_LINE,
    badly_encoded,
    check_text_encoding,
    erasure_register,
    json_id_fields,
    mapped_strings,
    read_feed,
    require_file,
    suppress_erased_named_records,
    suppress_erased_subjects,
    to_quarantine,
    undecodable,
)
from jobs.runner import job_arg_parser, run_job
from jobs.spark_session import size_stage_to_input

log = logging.getLogger("idres.consent")

EVENT_CONTENT = tuple(c for c in CONSENT_FEED_COLUMNS if c not in ("event_id", "source_record_id"))
TIMESTAMP_FIELDS = ("event_time", "recorded_at", "expires_at")
# An ISO 8601 date and time (seconds optional), and the same followed by a time zone: an offset, Z, UTC or a
# region id. Spark alone also reads a bare time as that time today, and a date-only value as its midnight.
ISO_DATE_TIME = r"^\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?"
# IANA ids without an area (GMT, EET, EST5EDT): Java reads its own short ids too, most of them no IANA id and
# read as a zone the feed hardly meant (BST as Asia/Dhaka, IST as Asia/Kolkata, PST as America/Los_Angeles).
AREA_LESS_ZONES = sorted(
    (z for z in zoneinfo.available_timezones() if "/" not in z and z not in ("localtime", "Factory")), key=len
)
# IANA ids with or without an area (Asia/Ust-Nera, Etc/GMT+2, GMT, EET); an unknown one leaves the time unreadable.
ZONE = (
    r"\s?([Zz]|UTC|[+-]\d{2}(:?\d{2})?|"
    + "|".join(re.escape(z) for z in reversed(AREA_LESS_ZONES))  # the longest first: EST5EDT before EST
    + r"|[A-Za-z]+(/[A-Za-z0-9_+-]+){1,2})$"
)
DATE_TIME = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?"
ZONED_DATE_TIME = DATE_TIME + ZONE
NAMED_ZONE = DATE_TIME + r"\s?[A-Za-z]"  # a date and time followed by a zone name, known or not
# The form nearly every feed writes (RFC 3339 with seconds, an upper-case T, and Z or an offset), which Spark reads
# as it is: parse_event_time skips its normalizations for it (about 8 s of the consent gate at 2.4M events).
RFC_3339_DATE_TIME = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"
# A refusal needs no basis, and its optional times decide nothing but that it took effect by its recorded_at.
REVOKING_STATUSES = ("withdrawn", "denied")
REFUSAL_OPTIONAL = ("lawful_basis", "recorded_at", "expires_at")  # what a refusal may carry and never decides by
# What a refusal is decided by, besides its time: the rest of its text is dropped when a byte of it is undecodable.
REFUSAL_DECIDING_TEXT = ("source_record_id", "purpose", "status")
STATUS_PRECEDENCE = {"withdrawn": 0, "denied": 1, "granted": 2}
NONE_RECORDED = "none_recorded"  # the status of a purpose no event decided (a profile's permission)
ALL_ATTRIBUTES = "*"
EXACT_JSON = {"timestampFormat": "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX"}  # content hashed with times to the microsecond
CUTOFF_CLOCK_SKEW = timedelta(minutes=5)  # how far a cutoff may lie ahead of this machine's clock (another's)

# Consent-feed quarantine reasons (besides malformed_record and bad_encoding).
MISSING_SUBJECT = "missing_subject"
UNKNOWN_PURPOSE = "unknown_purpose"
INVALID_LAWFUL_BASIS = "invalid_lawful_basis"
INVALID_STATUS = "invalid_status"
UNPARSEABLE_TIMESTAMP = "unparseable_timestamp"
TIMESTAMP_WITHOUT_ZONE = "timestamp_without_time_zone"
CONFLICTING_EVENT_ID = "conflicting_event_id"

# Gate decision reasons.
ADMITTED = "basis_granted"
NO_BASIS = "no_lawful_basis_recorded"
WITHDRAWN = "consent_withdrawn"
DENIED = "consent_denied"
EXPIRED = "consent_expired"
BASIS_NOT_PERMITTED = "basis_not_permitted_for_purpose"
PURPOSE_NOT_PERMITTED = "purpose_not_permitted"

LEDGER_COLUMNS = (
    "source_system",
    "region",
    "event_id",
    "source_record_id",
    *EVENT_CONTENT,
    "source_file",
    "run_id",
    "landed_at",
)


CONSENT_RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("source_system", pa.string()),
        ("events_read", pa.int64()),
        ("events_landed", pa.int64()),  # good events: each is in the ledger after the run (new, or landed before)
        ("events_quarantined", pa.int64()),
        ("landed_at", pa.timestamp("us", tz="UTC")),
        ("cutoff", pa.timestamp("us", tz="UTC")),  # the effective-consent cutoff the run applied
        ("policy_fingerprint", pa.string()),  # the purpose policy it gated the records under (PurposePolicy)
    ]
)


@dataclass
class GateResult:
    run_id: str
    policy_version: str
    records: int = 0
    admitted: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)
    events_read: int = 0
    events_quarantined: dict[str, int] = field(default_factory=dict)

    @property
    def reconciled(self) -> bool:
        return self.records == self.admitted + sum(self.excluded.values())


def map_consent_events(raw: DataFrame, source: SourceConfig) -> DataFrame:
    """A feed's rows in the ledger's column names, as trimmed strings. An instant a typed feed (Parquet) holds is
    written with its zone, so it reads back as the same instant (a plain cast to string drops the zone)."""
    assert source.consent_feed is not None
    instants = [f.name for f in raw.schema.fields if isinstance(f.dataType, T.TimestampType)]
    raw = raw.withColumns({c: F.date_format(F.col(f"`{c}`"), "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX") for c in instants})
    return raw.select(
        F.lit(source.name).alias("source_system"),
        F.lit(source.region).alias("region"),
        *mapped_strings(source.consent_feed.columns, CONSENT_FEED_COLUMNS),
        F.col(CORRUPT),
        F.col(SOURCE_FILE),
        F.col(UNDECODABLE_LINE),
    )


def _in(column: str, allowed: Sequence[str]) -> Column:
    return F.col(column).isin(*allowed)


def parse_event_time(raw: Column) -> Column:
    """A feed's timestamp text as an instant: ISO 8601 with a time zone, seconds optional; null otherwise."""
    upper_t_z = F.regexp_replace(F.regexp_replace(raw, r"^(\d{4}-\d{2}-\d{2})t", "$1T"), r"(\d)z$", "$1Z")  # RFC 3339
    with_seconds = F.regexp_replace(upper_t_z, r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2})(" + ZONE[:-1] + ")$", "$1:00$2")
    unknown_zone = raw.rlike(NAMED_ZONE) & ~raw.rlike(ZONED_DATE_TIME)  # not left to Java's short ids
    return F.when(raw.rlike(RFC_3339_DATE_TIME), F.try_to_timestamp(raw)).when(
        raw.rlike(ISO_DATE_TIME) & ~unknown_zone, F.try_to_timestamp(with_seconds)
    )


def assign_consent_reasons(events: DataFrame, policy: PurposePolicy) -> DataFrame:
    """Parse timestamps (time-zone aware, to UTC) and give each unusable event a quarantine reason.

    A withdrawal or denial must take effect whenever its subject, purpose and time are sound (its event time, or
    its recorded_at when the event time is missing or cannot be read): its lawful basis
    is not required (an invalid one is dropped), and an optional time it carries that cannot be read
    (recorded_at, expires_at) is dropped instead of discarding the refusal and leaving an earlier grant in force.
    So is any other text it carries with an undecodable byte (its id, basis, collection method or notice
    version; the id is then made from its content), and a byte elsewhere in its JSONL line (in a key it does
    not need) is no reason to discard it either. A grant must be decodable throughout, its line included. A
    status and a purpose are read in any letter case (a purpose as the policy spells it).
    """
    purposes = lookup({p.lower(): p for p in policy.purposes})
    df = events.withColumn("_raw_status", F.col("status")).withColumn("status", F.lower("status"))
    df = df.withColumn("_raw_purpose", F.col("purpose"))
    df = df.withColumn("purpose", F.coalesce(purposes[F.lower("purpose")], F.col("purpose")))
    for c in TIMESTAMP_FIELDS:
        df = df.withColumn(f"_raw_{c}", F.col(c)).withColumn(c, parse_event_time(F.col(c)))
    revokes = F.coalesce(_in("status", REVOKING_STATUSES), F.lit(False))
    carried = [c for c in CONSENT_FEED_COLUMNS if c not in (*REFUSAL_DECIDING_TEXT, *TIMESTAMP_FIELDS)]
    text = F.concat_ws("\u0001", *REFUSAL_DECIDING_TEXT, *[F.when(~revokes, F.col(c)) for c in carried])
    decided_by = [F.col(c).isNotNull() for c in ("source_record_id", "purpose", "event_time")]
    line_unsound = F.col(UNDECODABLE_LINE).isNotNull() & (~revokes | ~reduce(lambda a, b: a & b, decided_by))
    valid_basis = F.coalesce(_in("lawful_basis", LAWFUL_BASES), F.lit(False))
    unreadable = {c: F.col(f"_raw_{c}").isNotNull() & F.col(c).isNull() for c in TIMESTAMP_FIELDS}
    unzoned = {c: F.col(f"_raw_{c}").isNotNull() & ~F.col(f"_raw_{c}").rlike(ZONED_DATE_TIME) for c in TIMESTAMP_FIELDS}
    optional = [c for c in TIMESTAMP_FIELDS if c != "event_time"]
    # A refusal whose event time is missing or cannot be read had happened by the time its source recorded it: it
    # takes that time (its copies and reruns alike) rather than leave an earlier grant in force.
    event_time_unusable = F.col("_raw_event_time").isNull() | unreadable["event_time"] | unzoned["event_time"]
    recorded = F.col("recorded_at").isNotNull() & ~unzoned["recorded_at"]
    timed_when_recorded = revokes & recorded & event_time_unusable
    checked = {c: ~timed_when_recorded if c == "event_time" else ~revokes for c in TIMESTAMP_FIELDS}
    bad_time = reduce(lambda a, b: a | b, [checked[c] & unreadable[c] for c in TIMESTAMP_FIELDS])
    no_zone = reduce(lambda a, b: a | b, [checked[c] & unzoned[c] for c in TIMESTAMP_FIELDS])
    reason = (
        F.when(badly_encoded(text) | line_unsound, F.lit(BAD_ENCODING))
        .when(F.col(CORRUPT).isNotNull(), F.lit(MALFORMED_RECORD))
        .when(F.col("source_record_id").isNull(), F.lit(MISSING_SUBJECT))
        .when(~F.coalesce(_in("purpose", policy.purposes), F.lit(False)), F.lit(UNKNOWN_PURPOSE))
        .when(~F.coalesce(_in("status", CONSENT_STATUSES), F.lit(False)), F.lit(INVALID_STATUS))
        .when(~revokes & ~valid_basis, F.lit(INVALID_LAWFUL_BASIS))
        .when((F.col("_raw_event_time").isNull() & ~timed_when_recorded) | bad_time, F.lit(UNPARSEABLE_TIMESTAMP))
        .when(no_zone, F.lit(TIMESTAMP_WITHOUT_ZONE))
    )
    df = df.withColumn(REASON, reason)
    kept = F.col(REASON).isNull() & revokes  # a refusal that lands without what it cannot carry
    df = df.withColumn(
        "event_time", F.when(kept & timed_when_recorded, F.col("recorded_at")).otherwise(F.col("event_time"))
    )
    dropped = {c: kept & undecodable(F.col(c)) for c in carried}
    dropped["lawful_basis"] = kept & ~valid_basis
    content = F.struct(*[F.col(c) for c in (*SUBJECT, *EVENT_CONTENT)])
    given_id = F.when(~dropped["event_id"], F.col("event_id"))
    df = df.withColumn(
        "event_id", F.coalesce(given_id, F.concat(F.lit("h:"), F.sha2(F.to_json(content, EXACT_JSON), 256)))
    )
    df = df.withColumns({c: F.when(dropped[c], None).otherwise(F.col(c)) for c in carried if c != "event_id"})
    for c in optional:
        df = df.withColumn(c, F.when(kept & (unreadable[c] | unzoned[c]), None).otherwise(F.col(c)))
    # One event id carrying two different events cannot be trusted; exact replays are the same event, and so are
    # copies of a refusal that differ only in what it never decides by (as the ledger compares them). A refusal
    # beside another event lands apart, so a grant conflicts only with another grant (as it would with the ledger).
    per_id = Window.partitionBy("source_system", "event_id")
    good = F.col(REASON).isNull()
    variants = F.size(F.collect_set(F.when(good, decisive_content())).over(per_id))
    grant_variants = F.size(F.collect_set(F.when(good & ~revokes, decisive_content())).over(per_id))
    conflicting = good & F.when(revokes, variants > 1).otherwise(grant_variants > 1)
    return df.transform(_refusals_apart_and_other_conflicts_quarantined, conflicting)


def _refusals_apart_and_other_conflicts_quarantined(events: DataFrame, conflicting: Column) -> DataFrame:
    """Where `conflicting` holds (an event id that carries another event too): a refusal lands under an id of its
    own (refusal_own_id), so no withdrawal is lost to a source that reuses ids (a consent row updated in place); any
    other event is quarantined as `conflicting_event_id`."""
    refusal = F.coalesce(F.col("status").isin(*REVOKING_STATUSES), F.lit(False))
    return (
        events.withColumn("_conflict", conflicting)
        .withColumn("event_id", F.when(F.col("_conflict") & refusal, refusal_own_id()).otherwise(F.col("event_id")))
        .withColumn(REASON, F.when(F.col("_conflict") & ~refusal, F.lit(CONFLICTING_EVENT_ID)).otherwise(F.col(REASON)))
        .drop("_conflict")
    )


def refusal_own_id() -> Column:
    """`<event id>#<SHA-256 of what decides the refusal>`: the same refusal gets the same id on every run."""
    return F.concat(F.col("event_id"), F.lit("#"), F.sha2(F.to_json(decisive_content(), EXACT_JSON), 256))


def decisive_content(prefix: str = "") -> Column:
    """What makes two copies of one event id the same event: the subject and the content, less REFUSAL_OPTIONAL
    for a refusal (`prefix`: of the columns so prefixed, e.g. the ledger's held copy)."""
    refusal = F.coalesce(F.col(f"{prefix}status").isin(*REVOKING_STATUSES), F.lit(False))
    fields = {c: F.col(f"{prefix}{c}") for c in (*SUBJECT, *EVENT_CONTENT)}
    return F.struct(*[(F.when(~refusal, f) if c in REFUSAL_OPTIONAL else f).alias(c) for c, f in fields.items()])


def mark_ledger_conflicts(events: DataFrame, ledger: DataFrame | None) -> DataFrame:
    """Give `conflicting_event_id` to a good event whose id the ledger already holds with other content, or, to a
    refusal, an id of its own (refusal_own_id).

    The ledger is append-only: it keeps an event as first landed, and a correction is a new event. A copy
    that changes a landed event (its status, basis, times) is quarantined instead of silently not landing; a
    withdrawal under the id of a landed grant (a source that updates its consent rows in place) still lands.
    """
    if ledger is None:
        return events
    content = ("source_record_id", *EVENT_CONTENT)
    held = ledger.select(
        "source_system", "event_id", *[F.col(c).alias(f"_held_{c}") for c in content], F.lit(True).alias("_held")
    )
    held = held.withColumn("_held_source_system", F.col("source_system"))
    same = decisive_content().eqNullSafe(decisive_content("_held_"))
    changed = F.col(REASON).isNull() & F.coalesce(F.col("_held"), F.lit(False)) & ~same
    return (
        events.join(held, ["source_system", "event_id"], "left")
        .transform(_refusals_apart_and_other_conflicts_quarantined, changed)
        .drop("_held", "_held_source_system", *[f"_held_{c}" for c in content])
    )


def one_copy_per_event(events: DataFrame) -> DataFrame:
    """One row per event id (source system and id) of the landing events: the same copy whatever their order, so
    a rerun lands what the first run did. Copies differ at most in what a refusal never decides by; the one that
    carries most of those fields wins (on a tie, the one carrying the earlier of them, then the greater values)."""
    columns = [c for c in LEDGER_COLUMNS if c in events.columns]
    carried = reduce(lambda a, b: a + b, [F.col(c).isNotNull().cast("int") for c in REFUSAL_OPTIONAL])
    preference = F.struct(carried, *[F.col(c).isNotNull() for c in REFUSAL_OPTIONAL], *REFUSAL_OPTIONAL, "source_file")
    return (
        events.groupBy("source_system", "event_id")
        .agg(F.max_by(F.struct(*columns), preference).alias("_copy"))
        .select("_copy.*")
    )


def raw_event_values() -> Column:
    """A consent event as the feed wrote it, for the quarantine record: its JSONL line when a byte of it could not
    be decoded, else its fields as JSON."""
    as_written = {*TIMESTAMP_FIELDS, "status", "purpose"}
    fields = [F.col(f"_raw_{c}").alias(c) if c in as_written else F.col(c) for c in CONSENT_FEED_COLUMNS]
    return F.coalesce(F.col(UNDECODABLE_LINE), F.to_json(F.struct(*fields)))


def lapsed_grant(cutoff: Column) -> Column:
    """An event that is a grant whose expiry is at or before cutoff: it decides nothing while a live event does."""
    return (F.col("status") == "granted") & F.col("expires_at").isNotNull() & (F.col("expires_at") <= cutoff)


def refusals_in_force_when_received(ledger: DataFrame, cutoff: Column) -> DataFrame:
    """Ledger rows with a refusal's event_time no later than the ledger's landed_at: it had happened by the time
    this gate received it, so a time typed years ahead (2205 for 2025) cannot leave an earlier grant in force.
    Such a refusal, whose real time is unknown, is placed at the cutoff when that is earlier: a run's cutoff comes
    before the time it lands its events, and the run that receives a withdrawal applies it. Its recorded_at is no
    bound: typed years back (2015 for 2025), it would move the refusal before a grant it came after, which would
    then decide. A grant keeps its time: dated ahead, it only starts later."""
    if "landed_at" not in ledger.columns:  # events not landed yet
        return ledger
    refusal = F.coalesce(F.col("status").isin(*REVOKING_STATUSES), F.lit(False))
    ahead = refusal & (F.col("event_time") > F.col("landed_at"))
    return ledger.withColumn("event_time", F.when(ahead, F.least("landed_at", cutoff)).otherwise(F.col("event_time")))


def effective_consent(ledger: DataFrame, cutoff: datetime) -> DataFrame:
    """Per subject and purpose: the deciding event as of cutoff, its status, and whether it grants.

    The deciding event is the latest one still in force: a grant whose expiry has passed decides nothing, so the
    latest event before it does (a withdrawal stays withdrawn, an open-ended grant stays granted). Only when every
    event is a lapsed grant does the latest of them decide, as `expired`. A refusal takes effect when it happened
    or, at the latest, when it was received (refusals_in_force_when_received).
    """
    precedence = lookup(STATUS_PRECEDENCE)
    events = (
        refusals_in_force_when_received(ledger, F.lit(cutoff))
        .where(F.col("event_time") <= F.lit(cutoff))
        .select(*SUBJECT, "event_id", *EVENT_CONTENT)
        .dropDuplicates()
    )
    expired = lapsed_grant(F.lit(cutoff))
    latest_first = Window.partitionBy(*SUBJECT, "purpose").orderBy(
        expired.asc(),
        F.col("event_time").desc(),
        precedence[F.col("status")].asc(),
        F.col("recorded_at").desc_nulls_last(),
        F.col("event_id").asc(),
        *[F.col(c).asc() for c in EVENT_CONTENT],
    )
    return (
        events.withColumn("_rank", F.row_number().over(latest_first))
        .where("_rank = 1")
        .select(
            *SUBJECT,
            "purpose",
            "lawful_basis",
            F.when(expired, F.lit("expired")).otherwise(F.col("status")).alias("effective_status"),
            ((F.col("status") == "granted") & ~expired).alias("is_granted"),
            F.col("event_id").alias("deciding_event_id"),
            "event_time",
            "recorded_at",  # what orders the decisions of a profile's records too (jobs.unify.profile_permissions)
            "expires_at",
        )
    )


def accepted_bases(policy: PurposePolicy) -> Column:
    """A map column: purpose -> the lawful bases the policy accepts for it."""
    return F.create_map(
        *[x for purpose, bases in policy.purpose_bases.items() for x in (F.lit(purpose), F.array(*map(F.lit, bases)))]
    )


def permitted_purposes(effective: DataFrame, policy: PurposePolicy) -> DataFrame:
    """Per subject, the purposes granted on a lawful basis the policy accepts for that purpose."""
    allowed = accepted_bases(policy)
    return (
        effective.where(F.col("is_granted") & F.array_contains(allowed[F.col("purpose")], F.col("lawful_basis")))
        .groupBy(*SUBJECT)
        .agg(F.array_sort(F.collect_set("purpose")).alias("_permitted"))
    )


def admission_decisions(silver: DataFrame, effective: DataFrame, policy: PurposePolicy) -> DataFrame:
    """Silver plus `admitted`, `decision_reason` and the unification basis and deciding event."""
    unification = effective.where(F.col("purpose") == policy.unification_purpose).select(
        *SUBJECT,
        F.col("effective_status").alias("_status"),
        F.col("is_granted").alias("_granted"),
        F.col("lawful_basis").alias("unification_basis"),
        F.col("deciding_event_id").alias("unification_event_id"),
    )
    bases = list(policy.purpose_bases[policy.unification_purpose])
    reason = (
        F.when(F.col("_status").isNull(), F.lit(NO_BASIS))
        .when(F.col("_status") == "withdrawn", F.lit(WITHDRAWN))
        .when(F.col("_status") == "denied", F.lit(DENIED))
        .when(F.col("_status") == "expired", F.lit(EXPIRED))
        .when(~F.col("unification_basis").isin(*bases), F.lit(BASIS_NOT_PERMITTED))
        .otherwise(F.lit(ADMITTED))
    )
    return (
        silver.join(unification, list(SUBJECT), "left")
        .withColumn("decision_reason", reason)
        .withColumn("admitted", F.col("decision_reason") == ADMITTED)
        .drop("_status", "_granted")
    )


def apply_attribute_policy(decided: DataFrame, permitted: DataFrame, policy: PurposePolicy) -> DataFrame:
    """Null every attribute whose purposes are not granted; `_suppressed` lists the non-null ones nulled."""
    df = decided.join(permitted, list(SUBJECT), "left").withColumn(
        "_permitted", F.coalesce(F.col("_permitted"), F.array().cast("array<string>"))
    )
    rules = []
    for attribute, purposes in policy.attribute_purposes.items():
        columns = [c for c in SILVER_ATTRIBUTES[attribute][1] if c in df.columns]
        if columns:
            rules.append((attribute, columns, F.arrays_overlap(F.col("_permitted"), F.array(*map(F.lit, purposes)))))
    # Decide what is suppressed while the values are still there, then null them.
    suppressed = [
        F.when(~allowed & reduce(lambda a, b: a | b, [F.col(c).isNotNull() for c in columns]), F.lit(attribute))
        for attribute, columns, allowed in rules
    ]
    df = df.withColumn("_suppressed", F.filter(F.array(*suppressed), lambda x: x.isNotNull()))
    for _, columns, allowed in rules:
        for c in columns:
            df = df.withColumn(c, F.when(allowed, F.col(c)))
    return df.withColumn("permitted_purposes", F.array_join(F.col("_permitted"), ","))


def gate(silver: DataFrame, effective: DataFrame, policy: PurposePolicy) -> DataFrame:
    """Every silver record with its admission decision; admitted ones minimized to their purposes."""
    return admission_decisions(silver, effective, policy).transform(
        apply_attribute_policy, permitted_purposes(effective, policy), policy
    )


def admitted_records(gated: DataFrame, silver_columns: Sequence[str], policy: PurposePolicy) -> DataFrame:
    """The input of identity resolution: admitted records, minimized, with their basis."""
    return gated.where("admitted").select(
        *silver_columns,
        "unification_basis",
        "unification_event_id",
        "permitted_purposes",
        F.lit(policy.version).alias("policy_version"),
    )


def decision_audit(gated: DataFrame, policy: PurposePolicy, run_id: str, decided_at: datetime) -> DataFrame:
    """One row per record decision and per suppressed attribute: references and codes, no values."""
    attribute_purposes = {a: ",".join(p) for a, p in policy.attribute_purposes.items()}
    records = gated.select(
        *SUBJECT,
        F.lit(policy.unification_purpose).alias("purpose"),
        F.lit(ALL_ATTRIBUTES).alias("attribute"),
        F.when(F.col("admitted"), F.lit("admitted")).otherwise(F.lit("excluded")).alias("decision"),
        F.col("decision_reason").alias("reason"),
        F.col("unification_event_id").alias("deciding_event_id"),
    )
    attributes = (
        gated.where("admitted")
        .select(*SUBJECT, F.explode("_suppressed").alias("attribute"))
        .select(
            *SUBJECT,
            lookup(attribute_purposes)[F.col("attribute")].alias("purpose"),
            "attribute",
            F.lit("suppressed").alias("decision"),
            F.lit(PURPOSE_NOT_PERMITTED).alias("reason"),
            F.lit(None).cast("string").alias("deciding_event_id"),
        )
    )
    return records.unionByName(attributes).select(
        F.lit(run_id).alias("run_id"),
        F.lit(policy.version).alias("policy_version"),
        "*",
        F.lit(decided_at).cast("timestamp").alias("decided_at"),
    )


def land_consent_events(
    spark: SparkSession, cfg: PipelineConfig, run_id: str, at: datetime
) -> tuple[list[str], list[Row]]:
    """Land every configured consent feed in the ledger; bad events go to the consent quarantine. Returns the
    feeds landed and their events counted by source system and reason, for record_consent_events."""
    feeds = {f"{s.name} consent feed": s for s in cfg.sources if s.consent_feed is not None}
    for name, s in feeds.items():  # before its header is read in that encoding
        require_file(name, s.consent_feed.path)
        check_text_encoding(name, s.consent_feed.path, s.consent_feed.format, s.consent_feed.encoding)
    frames = [
        read_feed(
            spark,
            name,
            s.consent_feed.path,
            s.consent_feed.format,
            s.consent_feed.columns.values(),
            encoding=s.consent_feed.encoding,
            delimiter=s.consent_feed.delimiter,
            id_column=s.consent_feed.columns.get("source_record_id"),
            undecodable_lines_whole=False,
        )
        .transform(map_consent_events, s)
        .transform(assign_consent_reasons, cfg.policy)
        for name, s in feeds.items()
    ]
    if not frames:
        return [], []
    ledger_path = cfg.tables.consent_ledger
    held = delta_io.read_delta(spark, ledger_path) if delta_io.table_exists(ledger_path) else None
    erased = erasure_register(spark, cfg)
    checked = (
        reduce(lambda a, b: a.unionByName(b), frames)
        .transform(mark_ledger_conflicts, held)
        .transform(suppress_erased_subjects, erased)  # an erasure is not undone by a feed
        .persist()
    )
    events = checked.transform(suppress_erased_named_records, erased, json_id_fields(cfg, consent=True))
    try:
        counts = events.groupBy("source_system", REASON).count().collect()
        ledger = (
            events.where(F.col(REASON).isNull())
            .withColumn("source_file", F.col(SOURCE_FILE))
            .transform(one_copy_per_event)
            .withColumn("run_id", F.lit(run_id))
            .withColumn("landed_at", F.lit(at).cast("timestamp"))
            .select(*LEDGER_COLUMNS)
        )
        delta_io.merge_delta(ledger, ledger_path, keys=("source_system", "event_id"), run_id=run_id, job="consent_gate")
        quarantine = to_quarantine(events, raw_event_values(), run_id, at)
        delta_io.merge_delta(
            quarantine,
            cfg.tables.consent_quarantine,
            keys=QUARANTINE_KEYS,
            run_id=run_id,
            job="consent_gate",
        )
    finally:
        checked.unpersist()
    return [s.name for s in feeds.values()], counts


def record_consent_events(
    cfg: PipelineConfig, run_id: str, at: datetime, cutoff: datetime, sources: Sequence[str], counts: Sequence[Row]
) -> None:
    """One row per consent feed in audit/consent_runs: events read, landed and quarantined in this run (read =
    landed + quarantined), with the cutoff and policy it gated under. Written last, once the gate's outputs are:
    training and later runs read the row as the proof that the gate ran under that policy and cutoff."""
    rows = []
    for name in sources:
        mine = [r for r in counts if r["source_system"] == name]
        quarantined = sum(r["count"] for r in mine if r[REASON] is not None)
        landed = sum(r["count"] for r in mine if r[REASON] is None)
        rows.append(
            {
                "run_id": run_id,
                "source_system": name,
                "events_read": landed + quarantined,
                "events_landed": landed,
                "events_quarantined": quarantined,
                "landed_at": at,
                "cutoff": cutoff,
                "policy_fingerprint": cfg.policy.fingerprint,
            }
        )
        log.info("consent feed %s: read=%d landed=%d quarantined=%d", name, landed + quarantined, landed, quarantined)
    delta_io.merge_delta(
        pa.Table.from_pylist(rows, schema=CONSENT_RUNS_SCHEMA),
        cfg.tables.consent_runs,
        keys=("run_id", "source_system"),
        run_id=run_id,
        job="consent_gate",
        update_changed=True,
        ignore_changes_in=("landed_at",),
    )


def latest_applied_cutoff(cfg: PipelineConfig, run_id: str) -> datetime | None:
    """The latest cutoff another run applied (audit/consent_runs), or None. A run never takes consent as of an
    earlier time: an older run cleared and rerun would else turn a withdrawal later runs applied back into the
    grant before it, and publish it."""
    path = cfg.tables.consent_runs
    if not delta_io.table_exists(path) or "cutoff" not in delta_io.column_names(path):
        return None
    (latest,) = (
        delta_io.query_delta(f"SELECT max(cutoff) AS cutoff FROM r WHERE run_id <> {sql_string(run_id)}", r=path)
        .column("cutoff")
        .to_pylist()
    )
    return latest


def gating_policy(cfg: PipelineConfig) -> str | None:
    """The fingerprint of the purpose policy the last consent run gated the admitted records under
    (audit/consent_runs), or None when no run recorded one."""
    path = cfg.tables.consent_runs
    if not delta_io.table_exists(path) or "policy_fingerprint" not in delta_io.column_names(path):
        return None
    last = delta_io.query_delta("SELECT policy_fingerprint FROM r ORDER BY landed_at DESC LIMIT 1", r=path)
    return next(iter(last.column("policy_fingerprint").to_pylist()), None)


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str, cutoff: str | None = None) -> GateResult:
    """Land consent events, compute effective consent as of cutoff, and gate silver into admitted records."""
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        as_of = datetime.fromisoformat(cutoff) if cutoff else now
    except ValueError:
        as_of = None
    if as_of is None or as_of.tzinfo is None:
        raise IdresError("--cutoff must be an ISO 8601 time with a time zone, e.g. 2026-11-22T00:00:00+00:00")
    if as_of > now + CUTOFF_CLOCK_SKEW:
        raise IdresError(
            f"--cutoff {as_of.isoformat()} is in the future (now {now.isoformat()}): consent can be taken only as "
            "of a time that has passed, and every later run would have to apply it too (audit/consent_runs)"
        )
    t = cfg.tables
    run_at = delta_io.run_time(
        now, [(t.consent_runs, "landed_at"), (t.consent_ledger, "landed_at"), (t.consent_audit, "decided_at")]
    )
    if not cutoff:  # as of the time the run lands its events at: a refusal dated ahead is in force by then
        as_of = run_at
    applied = latest_applied_cutoff(cfg, run_id)
    if applied is not None and as_of < applied:
        log.warning("cutoff %s is before %s, which a run applied: consent is taken as of the later", as_of, applied)
        as_of = applied
    policy = cfg.policy
    delta_io.require_table(cfg.tables.silver, "standardize")
    silver_rows = delta_io.row_count(cfg.tables.silver)
    size_stage_to_input(spark, cfg.spark, silver_rows)
    feeds, event_counts = land_consent_events(spark, cfg, run_id, run_at)

    effective = effective_consent(delta_io.read_delta(spark, cfg.tables.consent_ledger), as_of)
    delta_io.merge_delta(
        effective,
        cfg.tables.effective_consent,
        keys=(*SUBJECT, "purpose"),
        run_id=run_id,
        job="consent_gate",
        update_changed=True,
        delete_missing=True,
    )
    effective = delta_io.read_delta(spark, cfg.tables.effective_consent)

    silver = delta_io.read_delta(spark, cfg.tables.silver)
    gated = gate(silver, effective, policy).persist()
    try:
        delta_io.merge_delta(
            admitted_records(gated, silver.columns, policy),
            cfg.tables.admitted,
            keys=SUBJECT,
            run_id=run_id,
            job="consent_gate",
            update_changed=True,
            delete_missing=True,
            schema_follows_source=True,
        )
        audit = decision_audit(gated, policy, run_id, run_at)
        delta_io.merge_delta(
            audit,
            cfg.tables.consent_audit,
            keys=("run_id", *SUBJECT, "purpose", "attribute"),
            run_id=run_id,
            job="consent_gate",
            update_changed=True,
            ignore_changes_in=("decided_at",),
            delete_missing_of_run=True,  # a retry of the run replaces its first attempt's decisions
        )
        tallies = audit.groupBy("decision", "reason", "attribute").count().collect()
    finally:
        gated.unpersist()
    record_consent_events(cfg, run_id, run_at, as_of, feeds, event_counts)

    events_read = sum(row["count"] for row in event_counts)
    events_quarantined: dict[str, int] = {}
    for row in event_counts:
        if row[REASON] is not None:
            events_quarantined[row[REASON]] = events_quarantined.get(row[REASON], 0) + row["count"]
    result = GateResult(
        run_id=run_id, policy_version=policy.version, events_read=events_read, events_quarantined=events_quarantined
    )
    for row in tallies:
        if row["decision"] == "admitted":
            result.admitted += row["count"]
        elif row["decision"] == "excluded":
            result.excluded[row["reason"]] = row["count"]
        else:
            result.suppressed[row["attribute"]] = row["count"]
    result.records = silver_rows
    log.info(
        "consent gate (policy %s): %d records, %d admitted, excluded %s, suppressed %s; events read %d, quarantined %s",
        policy.version,
        result.records,
        result.admitted,
        result.excluded,
        result.suppressed,
        events_read,
        events_quarantined,
    )
    return result


def main(argv: Sequence[str] | None = None) -> GateResult:
    parser: argparse.ArgumentParser = job_arg_parser("idres consent gate job")
    parser.add_argument("--cutoff", help="effective-consent cutoff, ISO 8601 with zone (default: now)")
    return run_job("consent_gate", run, argv, parser)


if __name__ == "__main__":
    # Call through the package module, so Spark pickles its functions by reference, not as __main__'s.
    from jobs.consent import main as job_main

    job_main()
