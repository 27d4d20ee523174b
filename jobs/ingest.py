"""Ingest: read every configured source, map it to the canonical raw schema, land it in bronze.

Rows that cannot be trusted go to the quarantine table with a reason code, never nowhere:
for every source, read = landed + quarantined. Bronze is merged on (source, id, record hash),
so rerunning the same batch adds nothing.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import reduce
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import delta_io
from jobs.canonical import (
    BRONZE_COLUMNS,
    CANONICAL_COLUMNS,
    CANONICAL_FIELDS,
    EARLIEST_BIRTH_DATE,
    TYPED_COLUMNS,
    ranked_versions,
    subject_hash,
    trimmed,
)
from jobs.config import PipelineConfig, SourceConfig
from jobs.errors import SourceSchemaError
from jobs.runner import job_arg_parser, run_job
from jobs.spark_session import size_stage_to_input

log = logging.getLogger("idres.ingest")

CORRUPT = "_corrupt_record"
SOURCE_FILE = "_source_file"
UNDECODABLE_LINE = "_undecodable_line"  # a JSONL line's text when it held a byte UTF-8 could not decode, else null
REASON = "quarantine_reason"
QUARANTINE_KEYS = ("source_system", "raw_hash", "reason")  # a quarantined line, in either quarantine table
BRONZE_KEYS = ("source_system", "source_record_id", "record_hash")  # a version of a source record

# Reason codes, in the order they are checked: a row gets the first that applies. Undecodable bytes come
# first, as they also break the parse of a JSON line.
BAD_ENCODING = "bad_encoding"
WRONG_FIELD_COUNT = "wrong_field_count"
MALFORMED_RECORD = "malformed_record"
MISSING_SOURCE_ID = "missing_source_id"
UNPARSEABLE_DATE = "unparseable_date"
IMPLAUSIBLE_DATE = "implausible_date"
INVALID_TYPE = "invalid_type"
DUPLICATE_SOURCE_ID = "duplicate_source_id"
ERASED_SUBJECT = "erased_subject"  # in the erasure register: never landed again, and its values not kept

# A JSON escape of half a surrogate pair (`\ud83d` with no low half after it, or a low half alone), after an even
# run of backslashes (group 1): it escapes no character, and Spark would land a `?` for it. A low half counts as
# paired only after a high-half escape that is one itself (at most 128 backslashes before it are weighed); that
# look back is tried only after a low half, as Java tries each of its lengths at every character.
_HIGH_SURROGATE_ESCAPE = r"\\u[dD][89abAB][0-9a-fA-F]{2}"
_LOW_SURROGATE_ESCAPE = r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
SURROGATE_ESCAPE = r"\\u[dD][89a-fA-F]"  # either half, paired or not: the lines the full pattern is run on
LONE_SURROGATE_ESCAPE = (
    rf"(?<!\\)((?:\\\\)*+)(?:{_HIGH_SURROGATE_ESCAPE}(?!{_LOW_SURROGATE_ESCAPE})"
    rf"|{_LOW_SURROGATE_ESCAPE}(?<!(?:^|[^\\])(?:\\\\){{0,64}}{_HIGH_SURROGATE_ESCAPE}{_LOW_SURROGATE_ESCAPE}))"
)


@dataclass
class SourceCounts:
    source_system: str
    region: str
    read: int = 0
    landed: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class IngestResult:
    run_id: str
    sources: list[SourceCounts]
    bronze_inserted: int

    @property
    def reconciled(self) -> bool:
        return all(s.read == s.landed + s.quarantined for s in self.sources)


def read_feed(
    spark: SparkSession,
    name: str,
    path: Path,
    fmt: str,
    columns: Iterable[str],
    encoding: str = "UTF-8",
    delimiter: str = ",",
    id_column: str | None = None,
    undecodable_lines_whole: bool = True,
) -> DataFrame:
    """A feed's rows with the named columns as strings, plus the corrupt-row, source-file and UNDECODABLE_LINE
    columns.

    encoding and delimiter apply to csv; jsonl is UTF-8 (RFC 8259), which the config loader checks. id_column,
    the column holding the source record id, is recovered from a malformed JSONL line where it can be. A JSONL
    line with an undecodable byte is held whole as a corrupt record, unless undecodable_lines_whole is False
    (see json_lines); a CSV or Parquet row's bytes are in its values, where the reader checks them.
    Fails before anything is written when the file is missing or lacks one of the columns.
    """
    require_file(name, path)
    location = str(path)
    corrupt = T.StructField(CORRUPT, T.StringType())
    source_file = F.col("_metadata.file_path").alias(SOURCE_FILE)
    if fmt == "csv":
        # RFC 4180 escapes a quote by doubling it; Spark's default escape is a backslash, which kept `""` in values.
        options = {
            "header": "true",
            "sep": delimiter,
            "encoding": encoding,
            "escape": '"',
            **csv_record_options(path, encoding, delimiter),
        }
        header = spark.read.options(**options).csv(location).columns
        schema = T.StructType([T.StructField(c, T.StringType()) for c in header] + [corrupt])
        raw = spark.read.schema(schema).options(**options, mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT)
        raw = raw.csv(location).select("*", source_file, F.lit(None).cast("string").alias(UNDECODABLE_LINE))
    elif fmt == "jsonl":
        schema = T.StructType([T.StructField(c, T.StringType()) for c in columns] + [corrupt])
        # JSON Lines ends a record at LF only: a CR is whitespace inside a record (and CRLF's is trailing).
        lines = spark.read.option("lineSep", "\n").text(location)
        raw = json_lines(lines.select("value", source_file), schema, id_column, undecodable_lines_whole)
    else:
        raw = spark.read.parquet(location).select(
            "*",
            F.lit(None).cast("string").alias(CORRUPT),
            source_file,
            F.lit(None).cast("string").alias(UNDECODABLE_LINE),
        )
    missing = sorted(set(columns) - set(raw.columns))
    if missing:
        raise SourceSchemaError(name, f"mapped column(s) missing from the file: {', '.join(missing)}")
    return raw


def json_lines(
    lines: DataFrame, schema: T.StructType, id_field: str | None = None, undecodable_whole: bool = True
) -> DataFrame:
    """One record per non-blank line of a JSONL extract (`value`), parsed with schema; a line that holds
    anything but one JSON object keeps its text in the schema's corrupt-record column, every other field null
    but id_field, the record's id as a lenient reader finds it (single quotes, the first of two objects), so the
    quarantined line stays the subject's: found by an access request, deleted by an erasure, and held without
    content when the subject is erased already.

    Spark's JSON reader would turn a line holding an array of objects into several records, and one holding
    an empty array into none; parsing line by line keeps read = lines. A UTF-8 byte-order mark is dropped.
    Single-quoted pseudo-JSON (a Python dict's repr) is no JSON, so it is corrupt too, and so is an object that
    holds a key twice, or a line with a byte UTF-8 cannot decode (unless undecodable_whole is False: then such
    a line is parsed, for its reader to judge field by field). An escape of half a surrogate pair is read as
    such a byte: U+FFFD takes its place. UNDECODABLE_LINE holds the text of each line that had such a byte.
    """
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT, "allowSingleQuotes": "false"}
    text = F.col("_text")
    corrupt = F.struct(*[(text if f.name == CORRUPT else F.lit(None)).cast(f.dataType).alias(f.name) for f in schema])
    # A line with an undecodable byte is held whole, also when the byte is in a key: the value it keys would
    # otherwise land as null, unseen (badly_encoded then quarantines it as bad_encoding).
    whole = single_json_value(text) & repeats_no_key(text)
    if undecodable_whole:
        whole = whole & F.col(UNDECODABLE_LINE).isNull()
    record = F.when(whole, F.from_json(text, schema, options)).otherwise(corrupt)
    lone_halves_marked = F.regexp_replace(text, LONE_SURROGATE_ESCAPE, "$1\ufffd")
    parsed = (
        lines.where(F.col("value").rlike(r"\S"))
        .withColumn("_text", F.regexp_replace("value", "^\ufeff", ""))
        .withColumn("_text", F.when(text.rlike(SURROGATE_ESCAPE), lone_halves_marked).otherwise(text))
        .withColumn(UNDECODABLE_LINE, F.when(text.contains("\ufffd"), text))
        .withColumn("_record", record)
    )
    if id_field is not None and re.fullmatch(r"\w+", id_field):  # a JSON path of one plain name
        # On the parsed column, so the parse runs once (the struct's fields are not computed anew per use).
        parsed_record = F.col("_record")
        lenient_id = F.when(parsed_record[CORRUPT].isNotNull(), F.get_json_object(text, f"$.{id_field}"))
        parsed = parsed.withColumn(
            "_record", parsed_record.withField(id_field, F.coalesce(parsed_record[id_field], lenient_id))
        )
    return parsed.select("_record.*", *(c for c in lines.columns if c != "value"), UNDECODABLE_LINE)


def named_record_ids(text: Column, id_field: str) -> Column:
    """The distinct ids a quarantined line's text gives id_field, as a key double- or single-quoted, decoded from
    JSON and trimmed as landed ids are (null for null text). More than one: an exporter joined records on one
    line, or wrote an array of them. json_lines holds such a line under its first record's id, yet it holds the
    others' values too, so an access export withholds its text, and a request or an erasure for any record it
    names finds it (jobs.subject_rights). The same id twice is one record's.

    Text that failed to parse has no reliable structure, so the key counts wherever it stands (in a nested
    object too): an erasure then takes a line that may name its subject rather than keep one that does."""
    # Possessive quantifiers: the JVM's regex engine recurses per repetition of a backtracking group, and a
    # 1 MB value would overflow its stack (which kills the executor, not just the task).
    value = r"""\s*:\s*(?:"([^"\\]*+(?:\\.[^"\\]*+)*+)"|'([^']*+)'|([^\s,}\]]++))"""
    pattern = F.lit(rf"[\"']{re.escape(id_field)}[\"']{value}")
    # One of the three groups takes part in each match; the others extract as "".
    double, single, bare = (F.regexp_extract_all(text, pattern, F.lit(group)) for group in (1, 2, 3))
    decoded = F.transform(
        double, lambda v: F.coalesce(F.get_json_object(F.concat(F.lit('{"v":"'), v, F.lit('"}')), "$.v"), v)
    )
    joined = F.zip_with(F.zip_with(decoded, single, lambda a, b: F.concat(a, b)), bare, lambda a, b: F.concat(a, b))
    return F.array_distinct(F.filter(F.transform(joined, trimmed), lambda v: v != ""))


def named_by_source(text: Column, id_fields: Mapping[str, str]) -> Column:
    """named_record_ids of text by its row's source_system's id field (id_fields: source -> field); null for a
    source that has none."""
    by_source = [F.when(F.col("source_system") == name, named_record_ids(text, f)) for name, f in id_fields.items()]
    return F.coalesce(*by_source) if by_source else F.lit(None).cast("array<string>")


def json_id_fields(cfg: PipelineConfig, consent: bool = False) -> dict[str, str]:
    """Each JSON Lines source's id field (its customer extract's, or with consent its consent feed's): the key a
    quarantined line names its records by. Text of other formats names no key."""
    feeds = ((s.name, s.consent_feed if consent else s) for s in cfg.sources)
    return {
        name: feed.columns["source_record_id"]
        for name, feed in feeds
        if feed is not None and feed.format == "jsonl" and "source_record_id" in feed.columns
    }


def suppress_erased_named_records(
    validated: DataFrame, erased: DataFrame | None, id_fields: Mapping[str, str]
) -> DataFrame:
    """Rows whose quarantined line names an erased record (beside its own, in joined records, or where the
    lenient reader found no id; see named_record_ids) get the reason erased_subject and that record's id, so
    to_quarantine keeps no content of them: an erasure is not undone by a line that holds the subject. Scans
    `validated` twice when there is a register, so give it persisted rows."""
    if erased is None or not id_fields:
        return validated
    named = named_by_source(F.col(CORRUPT), id_fields)
    hashes = erased.select(F.col("subject_hash").alias("_erased")).distinct()
    erased_lines = (
        validated.where(F.size(named) > 0)
        .select("source_system", CORRUPT, F.explode(named).alias("_named"))
        .join(F.broadcast(hashes), subject_hash("source_system", "_named") == F.col("_erased"), "left_semi")
        .groupBy("source_system", CORRUPT)
        .agg(F.min("_named").alias("_erased_id"))
    )
    erased_id = F.col("_erased_id")
    return (
        validated.join(F.broadcast(erased_lines), ["source_system", CORRUPT], "left")
        .withColumn(REASON, F.when(erased_id.isNotNull(), F.lit(ERASED_SUBJECT)).otherwise(F.col(REASON)))
        .withColumn("source_record_id", F.coalesce(erased_id, F.col("source_record_id")))
        .drop("_erased_id")
    )


def single_json_value(text: Column) -> Column:
    """True when text is one JSON value and nothing else.

    from_json reads the first value and ignores what follows, so `{...}{...}`, `{...} garbage` or `{...},`
    would land as one clean record. Wrapped in `[...]`, such text is no array of one element, unless what
    follows the value starts with `]` (the last line of a pretty-printed array, `{...}]`); wrapped as an
    object's member, that text breaks the object. Each check scans the text without building values.
    """
    in_array = F.json_array_length(F.concat(F.lit("["), text, F.lit("]")))
    as_member = F.json_object_keys(F.concat(F.lit('{"v":'), text, F.lit("}")))
    return (in_array == 1) & as_member.isNotNull()


def repeats_no_key(text: Column) -> Column:
    """False when text is a JSON object that holds one key twice (`{"nume": "Pop", "nume": "Ion"}`, also written
    `"num\\u0065"`): a reader keeps one of the values and drops the other unseen, so the line is no record to trust.
    True for anything else (what is no object is left to single_json_value)."""
    keys = F.json_object_keys(text)
    return F.coalesce(F.size(keys) == F.size(F.array_distinct(keys)), F.lit(True))


def csv_record_options(path: Path, encoding: str = "UTF-8", delimiter: str = ",") -> dict[str, str]:
    """Spark CSV options that keep a quoted field's line breaks in its record, for LF, CRLF or mixed endings,
    and let a record with any number of fields be read (and quarantined, when it has too many).

    multiLine parses the extract as one stream (one task per file; a quote left open takes the rest of the
    file into one wrong_field_count record). It ends records at a single separator, so records end at LF, and
    the CR of a CRLF goes with trailing whitespace, unless the header line ends in a lone CR (classic Mac).
    """
    with path.open(encoding=encoding, errors="replace", newline="") as fh:
        first_break = re.search(r"\r\n|\r|\n", fh.read(1 << 16))
    if first_break is not None and first_break.group() == "\r":
        options = {"multiLine": "true", "lineSep": "\r"}
    else:
        options = {"multiLine": "true", "lineSep": "\n", "ignoreTrailingWhiteSpace": "true"}
    return {**options, "maxColumns": str(csv_max_fields(path, encoding, delimiter, options["lineSep"]))}


# The CSV parser's default limit on the fields of one record (univocity's maxColumns): a record with more fails
# the whole read, not only its row.
CSV_DEFAULT_MAX_COLUMNS = 20_480
# Python's csv reader (csv_max_fields) refuses a field over 128 KiB unless told otherwise; an extract may hold any.
csv.field_size_limit(2**31 - 1)


def csv_max_fields(path: Path, encoding: str, delimiter: str, line_sep: str) -> int:
    """An upper bound on the fields of any one record of a CSV extract (at least the parser's default), for
    Spark's maxColumns.

    One pass over the lines, counting delimiters and quotes: a line with an odd number of quotes opens (or
    closes) a quoted field, so the delimiters of the lines until it closes again count towards one record. A
    delimiter inside quotes makes the bound higher, never lower. A stray quote inside an unquoted field (O"Brien),
    which the parser reads as a letter, turns that count's quoting the wrong way for the lines after it, so the
    fields of each record as Python's csv reader parses it (a quote opens a field only at its start, as Spark's
    parser has it) bound them too.
    """
    most = in_record = 0
    open_quote = False
    with path.open(encoding=encoding, errors="replace", newline=line_sep) as fh:
        for line in fh:
            in_record = (in_record if open_quote else 0) + line.count(delimiter)
            open_quote ^= line.count('"') % 2 == 1
            most = max(most, in_record)
    with path.open(encoding=encoding, errors="replace", newline="") as fh:
        try:
            parsed = max(map(len, csv.reader(fh, delimiter=delimiter, escapechar="\\")), default=0)
        except csv.Error:  # the lines' count stands alone
            parsed = 0
    return max(CSV_DEFAULT_MAX_COLUMNS, most + 1, parsed)


def written_in_utf8_for_a_single_byte_encoding(path: Path, encoding: str, chunk: int = 1 << 23) -> bool:
    """Whether a file read in a single-byte encoding (windows-1251, ISO 8859-2), which decodes any bytes without an
    error, is UTF-8 text with letters outside ASCII: an export that switched to UTF-8. Text in such an encoding is
    not valid UTF-8 beyond a few letters (a lower-case Cyrillic letter in windows-1251 opens a three-byte sequence
    that the next letter does not continue), so the whole file is checked; the first invalid byte ends it."""
    if len(b"\xd0\x9f".decode(encoding, errors="replace")) != 2:  # П in UTF-8: one character in a multi-byte one
        return False
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    beyond_ascii = False
    with path.open("rb") as fh:
        try:
            while block := fh.read(chunk):
                beyond_ascii |= not block.isascii()
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return beyond_ascii


def check_text_encoding(name: str, path: Path, fmt: str, encoding: str) -> None:
    """Fail (naming the feed) when a csv feed set to a single-byte encoding is UTF-8 text, which it would land
    garbled with no reason to quarantine it for."""
    if fmt == "csv" and written_in_utf8_for_a_single_byte_encoding(path, encoding):
        raise SourceSchemaError(
            name,
            f"the extract is UTF-8 text, but its encoding is set to {encoding}, which would read every letter "
            "outside ASCII as two or three others: set its encoding to UTF-8",
        )


def require_file(name: str, path: Path) -> None:
    """Fail (naming the source) when its extract is not there."""
    if not path.exists():
        raise SourceSchemaError(name, f"file not found at {path}")


JSONL_SAMPLE_LINES = 1000
CSV_HEADER_MAX_CHARS = 1 << 20
# A JSONL key outside the mapping is named in messages and logs only when at least half the sampled records,
# and at least this many, carry it. A key few records carry may be a value (a line like {"ivan@example.org":
# ...}); in a one- or two-record extract "half" is a single record, while a value is not the key of 20 records.
JSONL_MIN_RECORDS_TO_NAME = 20
# A CSV header cell outside the mapping is named in messages only when it reads as a plain column name.
PLAIN_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class SchemaDrift:
    """How an extract's columns differ from its source's mapping; column names only, never values."""

    missing: tuple[str, ...] = ()  # mapped columns the extract lacks
    added: tuple[str, ...] = ()  # extract columns neither mapped nor in ignored_columns
    retyped: tuple[str, ...] = ()  # mapped columns that are no longer strings
    # No column of the extract is a mapped one: its "header" may be a data row (a CSV without its header
    # line), so the added names are counted, never shown.
    unrecognized_header: bool = False
    # JSONL keys, neither mapped nor ignored, too few sampled records carry to name (see
    # JSONL_MIN_RECORDS_TO_NAME): they may be values, so they are counted, never shown.
    sporadic: int = 0

    def describe(self) -> str:
        added = self.added
        if self.unrecognized_header and added:
            added = (f"{len(added)} unnamed here, as none is a mapped column (is the header line missing?)",)
        if self.sporadic:
            added = (
                *added,
                f"{self.sporadic} more, unnamed here as they may be values (JSON keys in fewer than half, or fewer "
                f"than {JSONL_MIN_RECORDS_TO_NAME}, of the sampled records; CSV header cells that are no plain "
                "column name, or on a header longer than the record below it)",
            )
        parts = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("mapped column(s) missing from the file", self.missing),
                ("column(s) neither mapped nor in ignored_columns", added),
                ("mapped column(s) no longer strings", self.retyped),
            )
            if names
        ]
        if self.missing and (self.added or self.sporadic) and not self.unrecognized_header:
            parts.append("a renamed column shows as one missing and one added")
        return "; ".join(parts)


@dataclass(frozen=True)
class ColumnSeen:
    """An extract column as its header, schema or sampled records show it."""

    strings: bool  # every value seen is a string (or null)
    holders: int | None = None  # sampled records that hold it (jsonl); a header or a schema: None
    share: float = 1.0  # of the sampled records that hold it (jsonl); a header or a schema: 1.0

    named: bool = True  # False: a CSV header cell that may be a value (csv_columns)

    @property
    def nameable(self) -> bool:
        """Whether messages may name it: a header's or schema's column, or a key enough sampled records carry."""
        return self.named and (
            self.holders is None or (self.share >= 0.5 and self.holders >= JSONL_MIN_RECORDS_TO_NAME)
        )


def extract_columns(source: SourceConfig) -> dict[str, ColumnSeen]:
    """The extract's column names, each with whether it holds strings, from its header only.

    csv: the header line (every field is text). parquet: the file footer's schema. jsonl: the keys and
    value kinds of the first JSONL_SAMPLE_LINES lines (a sample: a key or a retyped value first seen
    further down goes unnoticed); lines that are not JSON objects are left for the malformed_record check.
    """
    encoding = header_encoding(source.encoding)
    if source.format == "csv":
        return csv_columns(source)
    if source.format == "parquet":
        return {f.name: ColumnSeen(arrow_text(f.type)) for f in parquet_schema(source)}
    strings: dict[str, bool] = {}
    holding: dict[str, int] = {}
    records = 0
    with source.path.open(encoding=encoding, errors="replace", newline="\n") as fh:
        for line in itertools.islice(fh, JSONL_SAMPLE_LINES):
            try:
                record = json.loads(line, parse_constant=no_json_constant)
            except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's parser goes
                continue
            if isinstance(record, dict):
                records += 1
                for key, value in record.items():
                    strings[key] = strings.get(key, True) and (value is None or isinstance(value, str))
                    holding[key] = holding.get(key, 0) + 1
    return {key: ColumnSeen(strings[key], holding[key], holding[key] / records) for key in strings}


def csv_columns(source: SourceConfig) -> dict[str, ColumnSeen]:
    """The CSV header's columns (csv_header), each text. A cell is named in messages only when it reads as a plain
    column name and the header is no longer than the record below it: a header line that lost its line break
    holds that record's values as cells. When the next two records agree on fewer fields, the header swallowed
    a record (which no table would then hold), and the source fails, naming no cell."""
    header, *below = csv_lines(source, 3) or [""]
    names = csv_header(source, header)
    records = [csv_fields(source, line) for line in below]
    shorter = [len(r) for r in records if r is not None and len(r) < len(names)]
    if len(records) == 2 and len(shorter) == 2 and shorter[0] == shorter[1]:
        raise SourceSchemaError(
            source.name,
            f"the header line has {len(names)} fields and the records below it {shorter[0]}: is the line break "
            "after the header missing?",
        )
    plain = not records or records[0] is None or len(records[0]) >= len(names)
    return {n: ColumnSeen(True, named=plain and PLAIN_COLUMN_NAME.fullmatch(n) is not None) for n in names}


def csv_lines(source: SourceConfig, count: int) -> list[str]:
    """A CSV extract's first `count` lines that are not blank, the header first; reading stops at a line longer
    than CSV_HEADER_MAX_CHARS (returned cut there)."""
    lines: list[str] = []
    with source.path.open(encoding=header_encoding(source.encoding), errors="replace", newline=None) as fh:
        while len(lines) < count and (line := fh.readline(CSV_HEADER_MAX_CHARS + 1)):
            if line.strip():
                lines.append(line)
            if len(line) > CSV_HEADER_MAX_CHARS:
                break
    return lines


def csv_fields(source: SourceConfig, line: str) -> list[str] | None:
    """One CSV line's fields, parsed alone; None when it does not parse alone (a quote it leaves open)."""
    try:
        return next(csv.reader([line.rstrip("\n")], delimiter=source.delimiter, strict=True), [])
    except csv.Error:
        return None


def csv_header(source: SourceConfig, line: str) -> list[str]:
    """The column names on a CSV extract's header line, its first line that is not blank (as Spark reads it).

    Only that line is parsed: a quote it opens and does not close would otherwise carry the records below into
    a column name, and from there into the drift message. Such a header, or one whose line runs past
    CSV_HEADER_MAX_CHARS, fails naming the source; so does a mapped column named twice."""
    if len(line) > CSV_HEADER_MAX_CHARS:
        raise SourceSchemaError(source.name, f"header line longer than {CSV_HEADER_MAX_CHARS} characters")
    names = csv_fields(source, line)
    if names is None:
        raise SourceSchemaError(
            source.name, "unreadable header line (a quote it opens and does not close, or an overlong name)"
        )
    # Spark tells header names apart ignoring case and renames every copy of a repeated one (email7, email13), so a
    # mapped column repeated so would read as missing. Other repeats, and empty names (a trailing delimiter), Spark
    # renames apart and the drift check sees them as unmapped.
    repeated = Counter(name.casefold() for name in names if name)
    twice = sorted(c for c in dict.fromkeys(source.columns.values()) if repeated[c.casefold()] > 1)
    if twice:
        raise SourceSchemaError(source.name, f"mapped column(s) named twice in the header: {', '.join(twice)}")
    return names


def no_json_constant(name: str) -> None:
    """Refuse NaN and Infinity, which Python's json reads as numbers but are no JSON (RFC 8259)."""
    raise ValueError(f"{name} is not JSON")


def header_encoding(encoding: str) -> str:
    """The codec to read an extract's header with: utf-8-sig for UTF-8, which drops the byte-order mark that
    Excel's "CSV UTF-8" writes (Spark's reader drops it from the rows itself)."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def arrow_text(dtype: pa.DataType) -> bool:
    """Whether a Parquet column of this Arrow type holds text as Spark reads it: a string in any layout,
    dictionary-encoded strings, or the null type a writer gives a column whose values are all null."""
    if pa.types.is_dictionary(dtype):
        return arrow_text(dtype.value_type)
    return any(
        check(dtype)
        for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view, pa.types.is_null)
    )


def parquet_schema(source: SourceConfig) -> pa.Schema:
    """The Arrow schema in a Parquet extract's footer; a file without a readable footer (empty, truncated, not
    Parquet) fails naming the source, not with Arrow's own error."""
    try:
        return pq.read_schema(source.path)
    except pa.ArrowException as err:
        raise SourceSchemaError(source.name, "unreadable parquet (empty, truncated or not a Parquet file)") from err


def schema_drift(source: SourceConfig, found: Mapping[str, ColumnSeen]) -> SchemaDrift:
    """Compare an extract's columns with the source's mapping.

    In jsonl a key may be left out of a record whose value is null, so a mapped key absent from the
    sample counts as missing only when the sample also has an unknown key (a likely rename).
    """
    mapped = list(dict.fromkeys(source.columns.values()))
    unknown = [c for c in found if c not in mapped and c not in source.ignored_columns]
    added = tuple(c for c in unknown if found[c].nameable)
    sporadic = len(unknown) - len(added)
    missing = tuple(c for c in mapped if c not in found)
    if source.format == "jsonl" and not unknown:
        missing = ()
    retyped = tuple(c for c in mapped if c in found and not found[c].strings)
    unrecognized = bool(unknown) and not any(c in mapped for c in found)
    if unrecognized:
        added, sporadic = tuple(unknown), 0
    return SchemaDrift(
        missing=missing, added=added, retyped=retyped, unrecognized_header=unrecognized, sporadic=sporadic
    )


def check_source_schema(source: SourceConfig) -> None:
    """Fail on a missing extract or on schema drift the source's `schema_drift` does not allow; log allowed drift.

    `allow_added` lets unknown columns through, `allow` also mapped columns that are no longer strings
    (read as text); a missing mapped column always fails, as the mapping has to change.
    """
    require_file(source.name, source.path)
    check_text_encoding(source.name, source.path, source.format, source.encoding)
    drift = schema_drift(source, extract_columns(source))
    tolerated = {"fail": (), "allow_added": ("added", "sporadic"), "allow": ("added", "sporadic", "retyped")}[
        source.schema_drift
    ]
    blocking = {k: getattr(drift, k) for k in ("missing", "added", "sporadic", "retyped") if k not in tolerated}
    if any(blocking.values()):
        raise SourceSchemaError(
            source.name, f"schema drift ({drift.describe()}); schema_drift is {source.schema_drift}"
        )
    if drift != SchemaDrift():
        log.warning(
            "ingest %s: schema drift let through (schema_drift=%s): %s",
            source.name,
            source.schema_drift,
            drift.describe(),
        )


def read_source(spark: SparkSession, source: SourceConfig) -> DataFrame:
    """A customer source's rows, every mapped column as a string (see read_feed)."""
    return read_feed(
        spark,
        source.name,
        source.path,
        source.format,
        source.columns.values(),
        source.encoding,
        source.delimiter,
        source.columns.get("source_record_id"),
    )


def mapped_strings(columns: Mapping[str, str], wanted: Iterable[str]) -> list[Column]:
    """Each wanted column from its mapped source column as a trimmed string (blank -> null), else null; trimmed of
    every Unicode space, control and format character, so a tab, CR or no-break space is no id or date of its own."""

    def one(c: str) -> Column:
        if c not in columns:
            return F.lit(None).cast("string").alias(c)
        # nullif computes the trimmed value once; when(value != "", value) ran its regex twice a cell.
        return F.nullif(trimmed(F.col(f"`{columns[c]}`")), F.lit("")).alias(c)

    return [one(c) for c in wanted]


def map_to_canonical(raw: DataFrame, source: SourceConfig) -> DataFrame:
    """Rename the source's columns to the canonical ones, as trimmed strings; blanks become null."""
    return raw.select(
        F.lit(source.name).alias("source_system"),
        F.lit(source.region).alias("region"),
        *mapped_strings(source.columns, CANONICAL_COLUMNS),
        F.col(CORRUPT),
        F.col(SOURCE_FILE),
    )


def _parse_typed(column: str, source: SourceConfig) -> Column:
    """A typed column parsed with the source's format; a timestamp without an offset is read as the wall-clock
    time of the source's time_zone (the session's zone is UTC), so every instant lands in UTC."""
    dtype = CANONICAL_FIELDS[column]
    if isinstance(dtype, T.DateType):
        return F.try_to_date(F.col(column), source.date_format)
    parsed = F.try_to_timestamp(F.col(column), F.lit(source.timestamp_format))
    return parsed if source.timestamp_has_zone else F.to_utc_timestamp(parsed, source.time_zone)


def badly_encoded(text: Column) -> Column:
    """True for a row whose raw record (the parser's corrupt-record text, else `text`) holds bytes its encoding
    could not decode: U+FFFD from a CSV or JSON decoder, or the invalid UTF-8 a Parquet string column may carry
    as it is (which pandas and Arrow consumers reject)."""
    return undecodable(F.coalesce(F.col(CORRUPT), text))


def undecodable(text: Column) -> Column:
    """True when text holds U+FFFD (a decoder's stand-in for bytes it could not decode) or invalid UTF-8."""
    return text.contains("\ufffd") | ~F.is_valid_utf8(text)


def assign_quarantine_reasons(mapped: DataFrame, source: SourceConfig) -> DataFrame:
    """Add `quarantine_reason` (null for a good row) and parse the typed canonical columns.

    The raw text of typed columns is kept in `_raw_<column>` for the quarantine record.
    """
    typed = TYPED_COLUMNS
    strings = [c for c in CANONICAL_COLUMNS if c not in typed]
    df = mapped
    for c in typed:
        df = df.withColumn(f"_raw_{c}", F.col(c)).withColumn(c, _parse_typed(c, source))
    corrupt_reason = WRONG_FIELD_COUNT if source.format == "csv" else MALFORMED_RECORD
    any_text = F.concat_ws("\u0001", *[F.col(c) for c in strings], *[F.col(f"_raw_{c}") for c in typed])
    failed_parse = {c: F.col(f"_raw_{c}").isNotNull() & F.col(c).isNull() for c in typed}
    reason = (
        F.when(badly_encoded(any_text), F.lit(BAD_ENCODING))
        .when(F.col(CORRUPT).isNotNull(), F.lit(corrupt_reason))
        .when(F.col("source_record_id").isNull(), F.lit(MISSING_SOURCE_ID))
        .when(failed_parse["date_of_birth"], F.lit(UNPARSEABLE_DATE))
        .when(
            (F.col("date_of_birth") < F.lit(EARLIEST_BIRTH_DATE)) | (F.col("date_of_birth") > F.current_date()),
            F.lit(IMPLAUSIBLE_DATE),
        )
        .when(
            reduce(lambda a, b: a | b, [v for k, v in failed_parse.items() if k != "date_of_birth"]),
            F.lit(INVALID_TYPE),
        )
    )
    df = df.withColumn(REASON, reason)
    # An id that occurs more than once in the extract cannot be trusted in any of its rows: a good copy beside a
    # bad one (a date of birth that does not parse) is not known to be the current version. A bad copy keeps its
    # own reason, the first that applies.
    copies = F.count("source_record_id").over(Window.partitionBy("source_system", "source_record_id"))
    return df.withColumn(
        REASON, F.when(F.col(REASON).isNull() & (copies > 1), F.lit(DUPLICATE_SOURCE_ID)).otherwise(F.col(REASON))
    )


def record_hash(columns: Sequence[str]) -> Column:
    """SHA-256 over the canonical values; nulls and empty strings hash differently."""
    return F.sha2(F.to_json(F.struct(*[F.col(c) for c in columns])), 256)


def to_bronze(validated: DataFrame, run_id: str, ingested_at: datetime) -> DataFrame:
    """The good rows in the bronze layout, with lineage columns."""
    return (
        validated.where(F.col(REASON).isNull())
        .withColumn("source_file", F.col(SOURCE_FILE))
        .withColumn("run_id", F.lit(run_id))
        .withColumn("ingested_at", F.lit(ingested_at).cast("timestamp"))
        .withColumn("record_hash", record_hash(["source_system", *CANONICAL_COLUMNS]))
        .select(*BRONZE_COLUMNS)
    )


def returning_versions(landed: DataFrame, bronze: DataFrame) -> DataFrame:
    """The landed rows whose version bronze holds already, but not as its record's current version, though its
    source gave it the same update time as that one (none, or one it never changes): a record changed and then
    changed back. Landed again (this run's lineage columns), each is its record's current version once more; a
    version an update time outranks stays outranked (a replayed extract)."""
    records = landed.select("source_system", "source_record_id").distinct()
    versions = (
        bronze.join(records, ["source_system", "source_record_id"], "left_semi")
        .withColumn("_source_updated_at", F.col("updated_at"))  # ranked_versions caps a future one per version
        .transform(ranked_versions)
    )
    current = versions.where("version_rank = 1").select(
        "source_system", "source_record_id", F.col("_source_updated_at").alias("_current_updated_at")
    )
    as_recent = (
        versions.where("version_rank > 1")
        .join(current, ["source_system", "source_record_id"])
        .where(F.col("_source_updated_at").eqNullSafe(F.col("_current_updated_at")))
        .select(*BRONZE_KEYS)
    )
    return landed.join(as_recent, list(BRONZE_KEYS), "left_semi")


def erasure_register(spark: SparkSession, cfg: PipelineConfig) -> DataFrame | None:
    """The erasure register (subject_hash of every erased source record), or None before the first erasure."""
    path = cfg.tables.erasure_register
    return delta_io.read_delta(spark, path) if delta_io.table_exists(path) else None


def suppress_erased_subjects(validated: DataFrame, erased: DataFrame | None) -> DataFrame:
    """Rows of subjects in the erasure register (subject_hash) get the reason erased_subject, whatever other
    reason they had; with no register (None), the rows are returned as they are."""
    if erased is None:
        return validated
    hashes = erased.select(F.col("subject_hash").alias("_erased")).distinct()
    return (
        validated.withColumn("_subject_hash", subject_hash())
        .join(F.broadcast(hashes), F.col("_subject_hash") == F.col("_erased"), "left")
        .withColumn(REASON, F.when(F.col("_erased").isNotNull(), F.lit(ERASED_SUBJECT)).otherwise(F.col(REASON)))
        .drop("_erased")
    )


def to_quarantine(validated: DataFrame, raw_values: Column, run_id: str, at: datetime) -> DataFrame:
    """The rows that have a reason, with their raw content, so none is lost; one row per distinct content.

    An erased subject's row keeps no content and no id, only its subject hash.
    """
    erased = F.col(REASON) == ERASED_SUBJECT
    raw = F.when(~erased, F.make_valid_utf8(F.coalesce(F.col(CORRUPT), raw_values)))
    return (
        validated.where(F.col(REASON).isNotNull())
        .select(
            "source_system",
            "region",
            F.col(SOURCE_FILE).alias("source_file"),
            F.when(~erased, F.make_valid_utf8("source_record_id")).alias("source_record_id"),
            F.col(REASON).alias("reason"),
            raw.alias("raw_record"),
            F.coalesce(F.sha2(raw, 256), subject_hash()).alias("raw_hash"),
            F.lit(run_id).alias("run_id"),
            F.lit(at).cast("timestamp").alias("quarantined_at"),
        )
        .dropDuplicates(["source_system", "raw_hash", "reason"])
    )


def raw_canonical_values() -> Column:
    """The canonical columns as the source wrote them (typed ones before parsing), as JSON."""
    return F.to_json(
        F.struct(*[F.col(f"_raw_{c}").alias(c) if c in TYPED_COLUMNS else F.col(c) for c in CANONICAL_COLUMNS])
    )


def validated_sources(
    spark: SparkSession, cfg: PipelineConfig, sources: Sequence[SourceConfig] | None = None
) -> DataFrame:
    """The sources (default: all configured) read, mapped and checked, as one DataFrame with a reason column.

    Every source's schema is checked before any is read, so one drifted extract stops the run before a write.
    """
    chosen = cfg.sources if sources is None else sources
    for s in chosen:
        check_source_schema(s)
    frames = [
        read_source(spark, s).transform(map_to_canonical, s).transform(assign_quarantine_reasons, s) for s in chosen
    ]
    return reduce(lambda a, b: a.unionByName(b), frames)


def _count(validated: DataFrame, cfg: PipelineConfig) -> list[SourceCounts]:
    return _count_rows(validated.groupBy("source_system", REASON).count().collect(), cfg)


def _count_rows(rows: Iterable[Mapping[str, object]], cfg: PipelineConfig) -> list[SourceCounts]:
    counts = {s.name: SourceCounts(s.name, s.region) for s in cfg.sources}
    for row in rows:
        c = counts[row["source_system"]]
        c.read += row["count"]
        if row[REASON] is None:
            c.landed += row["count"]
        else:
            c.quarantined += row["count"]
            c.reasons[row[REASON]] = row["count"]
    return list(counts.values())


def source_fingerprint(source: SourceConfig) -> str | None:
    """SHA-256 of a source extract's bytes, or None when the extract is missing."""
    if not source.path.is_file():
        return None
    digest = hashlib.sha256()
    with source.path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The code that decides what an extract's bytes land as, besides the source's settings.
INGEST_CODE = (Path(__file__), Path(__file__).with_name("canonical.py"))


def read_settings_fingerprint(source: SourceConfig) -> str:
    """SHA-256 of what decides how an extract is read besides its bytes: the source's settings but its path
    (date_format, columns, encoding...) and ingest's code. Incremental skips an extract only when these match too,
    so a fixed date_format or parser reads again an extract whose rows an earlier setting quarantined."""
    settings = {f.name: getattr(source, f.name) for f in fields(source) if f.name != "path"}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))
    for code in INGEST_CODE:
        digest.update(code.read_bytes())
    return digest.hexdigest()


def unchanged_sources(cfg: PipelineConfig, fingerprints: Mapping[str, tuple[str | None, str]], run_id: str) -> set[str]:
    """Sources whose extract is byte-identical to the one their last ingest before this run read, under the same
    settings and code (fingerprints: extract and settings digests; a rerun of the run compares with the same
    earlier run as its first attempt did, so it records the same counts), and none of whose rows bronze or the
    quarantine hold from a later load (an attempt that died before recording its counts)."""
    runs = cfg.tables.ingest_runs
    if not delta_io.table_exists(runs) or "read_settings_sha256" not in delta_io.column_names(runs):
        return set()
    sql = "SELECT run_id, source_system, source_sha256, read_settings_sha256, ingested_at FROM r"
    rows = delta_io.query_delta(sql, r=runs).to_pylist()
    earlier = sorted((r for r in rows if r["run_id"] != run_id), key=lambda r: r["ingested_at"])
    last = {r["source_system"]: (r["source_sha256"], r["read_settings_sha256"]) for r in earlier}
    recorded_at = {r["source_system"]: delta_io.as_utc(r["ingested_at"]) for r in earlier}
    # An attempt that died after landing rows but before its audit row may have landed another extract since.
    landed_after = set()
    for path, column in ((cfg.tables.bronze, "ingested_at"), (cfg.tables.quarantine, "quarantined_at")):
        if delta_io.table_exists(path):
            sql = f"SELECT source_system, max({column}) AS latest FROM t GROUP BY source_system"
            for r in delta_io.query_delta(sql, t=path).to_pylist():
                at = recorded_at.get(r["source_system"])
                if at is not None and r["latest"] is not None and delta_io.as_utc(r["latest"]) > at:
                    landed_after.add(r["source_system"])
    unchanged = {name for name, read in last.items() if None not in read and read == fingerprints.get(name)}
    return unchanged - landed_after


def load_time(cfg: PipelineConfig, now: datetime) -> datetime:
    """This attempt's load time, after every one bronze, its quarantine and the ingest audit hold
    (delta_io.run_time): versions are ranked by it, and an impossible update time is capped at it."""
    t = cfg.tables
    recorded = [(t.bronze, "ingested_at"), (t.quarantine, "quarantined_at"), (t.ingest_runs, "ingested_at")]
    return delta_io.run_time(now, recorded)


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str, mode: str = "full") -> IngestResult:
    """Land the sources in bronze and their bad rows in quarantine; record the counts.

    mode `full` reads every extract; `incremental` skips an extract byte-identical to the one the source's
    last ingest read (its rows are in bronze already), recording zero counts for it.
    """
    ingested_at = load_time(cfg, datetime.now(UTC))
    fingerprints = {s.name: (source_fingerprint(s), read_settings_fingerprint(s)) for s in cfg.sources}
    skipped = unchanged_sources(cfg, fingerprints, run_id) if mode == "incremental" else set()
    for name in sorted(skipped):
        log.info("ingest %s: extract unchanged since its last ingest; skipped (incremental)", name)
    to_read = [s for s in cfg.sources if s.name not in skipped]
    if not to_read:
        return _record_ingest(cfg, run_id, ingested_at, _count_rows([], cfg), fingerprints, 0)
    erased = erasure_register(spark, cfg)
    checked = validated_sources(spark, cfg, to_read).transform(suppress_erased_subjects, erased).persist()
    validated = checked.transform(suppress_erased_named_records, erased, json_id_fields(cfg))
    try:
        counts = _count(validated, cfg)
        size_stage_to_input(spark, cfg.spark, sum(c.read for c in counts))
        bronze = to_bronze(validated, run_id, ingested_at)
        landed_before = delta_io.table_exists(cfg.tables.bronze)
        metrics = delta_io.merge_delta(bronze, cfg.tables.bronze, keys=BRONZE_KEYS, run_id=run_id, job="ingest")
        if landed_before:
            returning = bronze.transform(returning_versions, delta_io.read_delta(spark, cfg.tables.bronze))
            delta_io.merge_delta(
                returning, cfg.tables.bronze, keys=BRONZE_KEYS, run_id=run_id, job="ingest", update_changed=True
            )
        quarantine = to_quarantine(validated, raw_canonical_values(), run_id, ingested_at)
        delta_io.merge_delta(quarantine, cfg.tables.quarantine, keys=QUARANTINE_KEYS, run_id=run_id, job="ingest")
    finally:
        checked.unpersist()
    return _record_ingest(cfg, run_id, ingested_at, counts, fingerprints, int(metrics["num_target_rows_inserted"]))


def _record_ingest(
    cfg: PipelineConfig,
    run_id: str,
    ingested_at: datetime,
    counts: list[SourceCounts],
    fingerprints: Mapping[str, tuple[str | None, str]],
    bronze_inserted: int,
) -> IngestResult:
    audit = pa.Table.from_pylist(
        [
            {
                "run_id": run_id,
                "source_system": c.source_system,
                "region": c.region,
                "rows_read": c.read,
                "rows_landed": c.landed,
                "rows_quarantined": c.quarantined,
                "ingested_at": ingested_at,
                "source_sha256": fingerprints[c.source_system][0],
                "read_settings_sha256": fingerprints[c.source_system][1],
            }
            for c in counts
        ],
        schema=INGEST_RUNS_SCHEMA,
    )
    delta_io.merge_delta(
        audit,
        cfg.tables.ingest_runs,
        keys=("run_id", "source_system"),
        run_id=run_id,
        job="ingest",
        update_changed=True,
        ignore_changes_in=("ingested_at",),  # a retried run's attempt time alone is no change
    )
    result = IngestResult(run_id=run_id, sources=counts, bronze_inserted=bronze_inserted)
    for c in counts:
        log.info(
            "ingest %s: read=%d landed=%d quarantined=%d %s",
            c.source_system,
            c.read,
            c.landed,
            c.quarantined,
            c.reasons or "",
        )
    log.info("ingest: %d new bronze rows; reconciled=%s", result.bronze_inserted, result.reconciled)
    return result


RUN_MODES = ("full", "incremental")
INGEST_RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("source_system", pa.string()),
        ("region", pa.string()),
        ("rows_read", pa.int64()),
        ("rows_landed", pa.int64()),
        ("rows_quarantined", pa.int64()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        ("source_sha256", pa.string()),
        ("read_settings_sha256", pa.string()),  # the source's settings and ingest's code (read_settings_fingerprint)
    ]
)


def main(argv: Sequence[str] | None = None) -> IngestResult:
    parser = job_arg_parser("idres ingest job")
    parser.add_argument(
        "--mode", choices=RUN_MODES, default="full", help="incremental skips extracts unchanged since their last ingest"
    )
    return run_job("ingest", run, argv, parser)


if __name__ == "__main__":
    # Call through the package module, so Spark pickles its functions by reference, not as __main__'s.
    from jobs.ingest import main as job_main

    job_main()
