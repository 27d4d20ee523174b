"""Fault and abuse tests on the input side (issue #7): drifted or missing extracts, and fuzzed source rows."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import random
import shutil
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from chispa import assert_df_equality
from deltalake import DeltaTable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs import delta_io, demo_data, ingest, query, standardize
from jobs.config import DEFAULT_CONF_DIR, PipelineConfig, SourceConfig, load_config
from jobs.errors import ConfigError, SourceSchemaError
from tests.conftest import config_in, copy_lakehouse

pytestmark = pytest.mark.fault


def with_source(cfg: PipelineConfig, name: str, **changes: object) -> PipelineConfig:
    """cfg with one source's settings changed."""
    sources = tuple(dataclasses.replace(s, **changes) if s.name == name else s for s in cfg.sources)
    return dataclasses.replace(cfg, sources=sources)


def ingest_tables(cfg: PipelineConfig) -> dict[str, int | None]:
    """The version of each table ingest writes (None when it does not exist)."""
    return {
        str(t): delta_io.table_version(t) for t in (cfg.tables.bronze, cfg.tables.quarantine, cfg.tables.ingest_runs)
    }


@pytest.fixture(scope="module")
def clean_batch(spark, tmp_path_factory) -> PipelineConfig:
    """20 demo people ingested once, so every ingest table exists before a drifted extract arrives."""
    cfg = config_in(tmp_path_factory.mktemp("clean-batch"))
    demo_data.generate(cfg, people=20, seed=3)
    assert ingest.run(spark, cfg, run_id="clean").reconciled
    return cfg


def _rewrite_csv(src: Path, dst: Path, change_header) -> None:
    with src.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    rows[0] = change_header(rows[0])
    with dst.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, delimiter=";").writerows(rows)


def renamed_csv(cfg: PipelineConfig, folder: Path) -> tuple[str, Path]:
    dst = folder / "customers.csv"
    _rewrite_csv(cfg.source("ua_crm").path, dst, lambda h: ["surname" if c == "prizvyshche" else c for c in h])
    return "ua_crm", dst


def added_parquet(cfg: PipelineConfig, folder: Path) -> tuple[str, Path]:
    dst = folder / "members.parquet"
    table = pq.read_table(cfg.source("eu_loyalty").path)
    pq.write_table(table.append_column("loyalty_tier", pa.array(["gold"] * table.num_rows)), dst)
    return "eu_loyalty", dst


def retyped_parquet(cfg: PipelineConfig, folder: Path) -> tuple[str, Path]:
    dst = folder / "members.parquet"
    table = pq.read_table(cfg.source("eu_loyalty").path)
    i = table.schema.get_field_index("post_code")
    numbers = pa.array([int(v) if v and v.isdigit() else None for v in table["post_code"].to_pylist()], pa.int64())
    pq.write_table(table.set_column(i, "post_code", numbers), dst)
    return "eu_loyalty", dst


def retyped_jsonl(cfg: PipelineConfig, folder: Path) -> tuple[str, Path]:
    dst = folder / "customers.jsonl"
    lines = cfg.source("ro_shop").path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    records[0]["id_client"] = int(records[0]["id_client"])
    dst.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return "ro_shop", dst


def sporadic_key_jsonl(cfg: PipelineConfig, folder: Path) -> tuple[str, Path]:
    """One record carries a key that is a person's email: a value, which no message may name."""
    dst = folder / "customers.jsonl"
    records = [json.loads(line) for line in cfg.source("ro_shop").path.read_text(encoding="utf-8").splitlines()]
    records[1]["ivan.canary@example.org"] = "x"
    dst.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return "ro_shop", dst


def missing_file(cfg: PipelineConfig, folder: Path) -> tuple[str, Path]:
    return "ro_shop", folder / "customers.jsonl"


@pytest.mark.parametrize(
    ("drift", "expected"),
    [
        (missing_file, r"source 'ro_shop': file not found"),
        (
            added_parquet,
            r"source 'eu_loyalty': schema drift \(column\(s\) neither mapped nor in ignored_columns: "
            r"loyalty_tier\)",
        ),
        (
            renamed_csv,
            r"source 'ua_crm': schema drift \(mapped column\(s\) missing from the file: prizvyshche; "
            r"column\(s\) neither mapped nor in ignored_columns: surname; a renamed column",
        ),
        (retyped_parquet, r"source 'eu_loyalty': schema drift \(mapped column\(s\) no longer strings: post_code\)"),
        (retyped_jsonl, r"source 'ro_shop': schema drift \(mapped column\(s\) no longer strings: id_client\)"),
        (
            sporadic_key_jsonl,
            r"^source 'ro_shop': schema drift \(column\(s\) neither mapped nor in ignored_columns: 1 more, unnamed "
            r"here as they may be values \(JSON keys in fewer than half, or fewer than 20, of the sampled records; CSV "
            r"header cells that are no plain column name, or on a header longer than the record below it\)\); "
            r"schema_drift is fail$",
        ),
    ],
    ids=["missing_file", "added_column", "renamed_column", "retyped_parquet", "retyped_jsonl", "sporadic_jsonl_key"],
)
def test_a_drifted_extract_fails_the_run_before_any_table_changes(spark, clean_batch, tmp_path, drift, expected):
    name, path = drift(clean_batch, tmp_path)
    cfg = with_source(clean_batch, name, path=path)
    before = ingest_tables(cfg)
    assert None not in before.values()
    with pytest.raises(SourceSchemaError, match=expected) as err:
        ingest.run(spark, cfg, run_id="drifted")
    assert err.value.source == name
    assert ingest_tables(cfg) == before
    first_ids = delta_io.query_delta("SELECT min(source_record_id) AS id FROM b", b=cfg.tables.bronze)
    assert first_ids["id"][0].as_py() not in str(err.value)  # names, never values


def test_a_key_of_a_tiny_jsonl_extract_is_counted_never_named(clean_batch, tmp_path, caplog):
    key = "ivan.canary@example.org"  # a key that is a value: every record carries it, as there is one
    source = clean_batch.source("ro_shop")
    record = dict.fromkeys(source.columns.values(), "x") | {key: "x"}
    path = tmp_path / "customers.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    source = dataclasses.replace(source, path=path)
    with pytest.raises(SourceSchemaError, match=r"1 more, unnamed here as they may be values") as err:
        ingest.check_source_schema(source)
    with caplog.at_level(logging.WARNING, logger="idres.ingest"):
        ingest.check_source_schema(dataclasses.replace(source, schema_drift="allow_added"))
    assert caplog.records  # the drift let through is logged, counted
    assert [text for text in (str(err.value), caplog.text) if "canary" in text] == []


def text_layouts_parquet(cfg: PipelineConfig, folder: Path) -> Path:
    """eu_loyalty's extract with its text columns in other Arrow layouts: an all-null column of Arrow type
    null, dictionary-encoded strings and string views."""
    table = pq.read_table(cfg.source("eu_loyalty").path)
    relaid = {
        "dietary_health_notes": pa.nulls(table.num_rows),
        "country_code": table["country_code"].dictionary_encode(),
        "town": table["town"].cast(pa.string_view()),
    }
    for name, column in relaid.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    dst = folder / "members.parquet"
    pq.write_table(table, dst)
    return dst


def test_text_in_any_arrow_layout_is_no_drift_and_lands_as_written(spark, clean_batch, tmp_path):
    source = clean_batch.source("eu_loyalty")
    relaid = dataclasses.replace(source, path=text_layouts_parquet(clean_batch, tmp_path))
    ingest.check_source_schema(relaid)  # does not raise

    def landed(src: SourceConfig) -> DataFrame:
        return ingest.read_source(spark, src).transform(ingest.map_to_canonical, src).drop(ingest.SOURCE_FILE)

    expected = landed(source).withColumn("health_note", F.lit(None).cast("string"))
    assert_df_equality(landed(relaid), expected, ignore_row_order=True, ignore_nullable=True)


@pytest.mark.parametrize("keep", [0, 100], ids=["empty", "truncated"])
def test_an_unreadable_parquet_extract_fails_naming_its_source(clean_batch, tmp_path, keep):
    path = tmp_path / "members.parquet"
    path.write_bytes(clean_batch.source("eu_loyalty").path.read_bytes()[:keep])
    source = dataclasses.replace(clean_batch.source("eu_loyalty"), path=path)
    with pytest.raises(SourceSchemaError, match=r"^source 'eu_loyalty': unreadable parquet"):
        ingest.check_source_schema(source)


def test_a_csv_without_its_header_line_fails_without_echoing_its_first_row(spark, clean_batch, tmp_path):
    src = clean_batch.source("ua_crm").path
    with src.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    headerless = tmp_path / "customers.csv"
    with headerless.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, delimiter=";").writerows(rows[1:])
    cfg = with_source(clean_batch, "ua_crm", path=headerless)
    with pytest.raises(SourceSchemaError, match=r"\(is the header line missing\?\)") as err:
        ingest.run(spark, cfg, run_id="headerless")
    message = str(err.value)
    assert f"{len(rows[1])} unnamed here" in message
    assert [v for v in rows[1] if len(v) >= 4 and v in message] == []  # the customer's values stay out of it


def test_a_csv_header_that_lost_its_line_break_names_no_value_and_loses_no_record(clean_batch, tmp_path, caplog):
    """The first record joined to the header: its values were named as added columns, in the error and the log."""
    src = clean_batch.source("ua_crm").path
    with src.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    joined = tmp_path / "customers.csv"

    def write(records: list[list[str]]) -> None:
        text = io.StringIO()
        csv.writer(text, delimiter=";").writerows(records)
        header, _, rest = text.getvalue().partition("\r\n")
        joined.write_text(header + rest, encoding="utf-8")  # the first line break lost

    write(rows[:4])  # two records below: they agree on fewer fields than the header, which swallowed one
    source = dataclasses.replace(clean_batch.source("ua_crm"), path=joined, schema_drift="allow_added")
    with pytest.raises(SourceSchemaError, match=r"records below it \d+: is the line break after the header missing"):
        ingest.check_source_schema(source)
    write(rows[:2])  # the only record joined: nothing to compare with, so its cells are counted, not named
    for drift in ("fail", "allow_added"):
        with caplog.at_level(logging.WARNING, logger="idres.ingest"), pytest.raises(SourceSchemaError) as err:
            ingest.check_source_schema(dataclasses.replace(source, schema_drift=drift))
            raise SourceSchemaError(source.name, "let through")
        said = str(err.value) + caplog.text
        assert [v for v in rows[1] if len(v) >= 4 and v in said] == [], drift


def test_a_jsonl_line_with_an_undecodable_byte_in_a_key_is_quarantined_not_landed_without_its_value(
    spark, clean_batch, tmp_path
):
    """The key no longer matched the mapping, so the value it held landed as null, unseen."""
    cfg = copy_lakehouse(clean_batch, tmp_path / "copy")
    columns = cfg.source("ro_shop").columns
    id_key, last_name = columns["source_record_id"], columns["last_name"]
    records = [
        dict.fromkeys(columns.values()) | {id_key: f"RX-{n}", last_name: name} for n, name in ((1, "Pop"), (2, "Ion"))
    ]
    good, bad = (json.dumps(r).encode() for r in records)
    bad = bad.replace(f'"{last_name}"'.encode(), f'"{last_name[:2]}'.encode() + b"\xff" + f'{last_name[2:]}"'.encode())
    path = tmp_path / "customers.jsonl"
    path.write_bytes(good + b"\n" + bad + b"\n")
    cfg = with_source(cfg, "ro_shop", path=path, schema_drift="allow_added")  # the odd key: one unnamed, allowed

    assert ingest.run(spark, cfg, run_id="bad-key").reconciled

    def rows(table: Path, columns: str) -> list[dict]:
        sql = f"SELECT {columns} FROM t WHERE run_id = 'bad-key' AND source_system = 'ro_shop'"
        return delta_io.query_delta(sql, t=table).to_pylist()

    assert rows(cfg.tables.quarantine, "source_record_id, reason") == [
        {"source_record_id": "RX-2", "reason": "bad_encoding"}
    ]
    assert rows(cfg.tables.bronze, "source_record_id, last_name") == [{"source_record_id": "RX-1", "last_name": "Pop"}]


def test_allowed_added_columns_land_with_a_log_line_naming_only_source_and_column(spark, clean_batch, tmp_path, caplog):
    cfg = copy_lakehouse(clean_batch, tmp_path)
    _, path = added_parquet(cfg, tmp_path)
    cfg = with_source(cfg, "eu_loyalty", path=path, schema_drift="allow_added")
    with caplog.at_level(logging.WARNING, logger="idres.ingest"):
        result = ingest.run(spark, cfg, run_id="allowed")
    drift_lines = [r.getMessage() for r in caplog.records if "schema drift" in r.getMessage()]
    assert drift_lines == [
        "ingest eu_loyalty: schema drift let through (schema_drift=allow_added): "
        "column(s) neither mapped nor in ignored_columns: loyalty_tier"
    ]
    assert result.reconciled and result.bronze_inserted == 0  # same canonical rows as the clean batch
    eu = next(s for s in result.sources if s.source_system == "eu_loyalty")
    assert eu.read == pq.read_metadata(path).num_rows == eu.landed + eu.quarantined
    audit = delta_io.query_delta(
        "SELECT count(*) AS n FROM r WHERE run_id = 'allowed' AND rows_read = rows_landed + rows_quarantined",
        r=cfg.tables.ingest_runs,
    )
    assert audit["n"][0].as_py() == len(cfg.sources)
    assert_string_filters_work_in_query(cfg)


def assert_string_filters_work_in_query(cfg: PipelineConfig) -> None:
    """jobs.query filters on text columns of tables delta-rs merged into (their files hold string_view)."""
    files = [pq.read_schema(f) for f in delta_io.data_files(DeltaTable(str(cfg.tables.ingest_runs)))]
    assert any(pa.types.is_string_view(t) for schema in files for t in schema.types)  # the bug's precondition
    sql = "SELECT count(*) AS n FROM ingest_runs WHERE source_system = 'eu_loyalty' AND run_id LIKE 'allow%'"
    assert query.query(cfg, sql)["n"][0].as_py() == 1


def test_ignored_columns_are_no_drift_and_bad_source_settings_name_file_and_key(clean_batch, tmp_path):
    source = dataclasses.replace(clean_batch.source("eu_loyalty"), ignored_columns=("loyalty_tier",))
    _, path = added_parquet(clean_batch, tmp_path)
    ingest.check_source_schema(dataclasses.replace(source, path=path))  # does not raise
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    data = yaml.safe_load((conf / "sources.yaml").read_text(encoding="utf-8"))
    data["sources"][0]["schema_drift"] = "ignore"
    data["sources"][0]["encoding"] = "klingon-8"
    data["sources"][2]["ignored_columns"] = ["given_name", 7]
    data["sources"][1]["ignored_columns"] = ["nume"]
    data["sources"][1]["encoding"] = "windows-1250"
    (conf / "sources.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert sorted(err.value.problems) == [
        "sources.yaml: sources[0] (ua_crm).encoding: is not a known text encoding, got 'klingon-8'",
        "sources.yaml: sources[0] (ua_crm).schema_drift: must be one of fail, allow_added, allow, got 'ignore'",
        "sources.yaml: sources[1] (ro_shop).encoding: must be UTF-8 for jsonl (RFC 8259), got 'windows-1250'",
        "sources.yaml: sources[1] (ro_shop).ignored_columns: 'nume' is also mapped under columns",
        "sources.yaml: sources[2] (eu_loyalty).ignored_columns: must be a list of source column names",
    ]


# Values a hostile or broken extract carries. Every one is text a row may hold; none may crash ingest.
INJECTIONS = ('=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "@SUM(1)", "-1+1", "\t=1+1")
LOOKALIKES = ("Шевчеnко", "Ivanоv", "Коваль" + "\u0301", "Pаvlо")  # Latin n, Cyrillic о / а mixed in
AWKWARD = (
    'O"Brien',
    "a;b;c",
    "  padded  ",
    "emoji 😀",
    "\u200bzero width",
    "two\nlines",
    'quoted;"x"\r\nbreak',
    "nul\0",
)
BAD_DATES = ("2023-02-30", "31.04.2024", "30.02.2023", "31/04/2024", "00.00.0000", "1.1.1")
BAD_BYTES = ("Ковальчук".encode("cp1251"), "Müller".encode("latin-1"), b"\xff\xfe")
MEGABYTE = "Я" * (1 << 19)  # 1 MiB in UTF-8
LANDS_AS_WRITTEN = {'=HYPERLINK("http://x","y")', 'O"Brien', "a;b;c", "two\nlines", 'quoted;"x"\r\nbreak', MEGABYTE}
BYTES_MARK = "⟦bytes⟧"  # where a writer puts the next undecodable byte string
# Lines of a JSONL extract that are no JSON object; each is one record, quarantined as malformed_record.
# {n} keeps them distinct: quarantine holds one row per distinct content (audit/ingest_runs counts every copy).
NOT_JSON_OBJECTS = (
    '{{"id_client": "F-cut{n}", "nume": "Pop',
    "[1, {n}]",
    "{n}",
    '"text {n}"',
    '{{"id_client": "{n}",}}',
)
# JSON values that are no strings: with schema_drift allow, they are read as their JSON text.
ODD_JSON_VALUES = (123, True, {"nested": ["a"]}, 1.5e300)
# date of birth and update time in each source's own format
GOOD_TIMES = {
    "ua_crm": ("01.02.1980", "01.03.2025 10:15"),
    "ro_shop": ("1980-02-01", "2025-03-01T10:15:00+02:00"),
    "eu_loyalty": ("01/02/1980", "2025-03-01 10:15:00"),
}


def fuzzed_records(source: SourceConfig, rows: int, seed: int) -> list[dict[str, object] | None]:
    """Seeded hostile records for a source, keyed by its column names; None marks a slot for the writer to
    break in its own way (a blank line, a line that is no JSON object, a row of nulls)."""
    rng = random.Random(seed)
    col = source.columns
    dob, updated = GOOD_TIMES[source.name]
    records: list[dict[str, object] | None] = []
    for i in range(rows):
        record: dict[str, object] = dict.fromkeys(source.columns.values())
        record.update({col["source_record_id"]: f"F-{i}", col["last_name"]: "Бондар", col["first_name"]: "Анна"})
        record.update({col["date_of_birth"]: dob, col["updated_at"]: updated})
        kind = rng.choice(("injection", "lookalike", "awkward", "nfd", "date", "bytes", "no_id", "broken"))
        if kind == "injection":
            record[col[rng.choice(("last_name", "first_name", "city", "email", "street"))]] = rng.choice(INJECTIONS)
        elif kind == "lookalike":
            record[col["last_name"]] = rng.choice(LOOKALIKES)
        elif kind == "awkward":
            record[col[rng.choice(("last_name", "street", "city"))]] = rng.choice(AWKWARD)
        elif kind == "nfd":
            record[col["first_name"]] = unicodedata.normalize(rng.choice(("NFD", "NFC")), "Йосип Ёлкін")
        elif kind == "date":
            record[col["date_of_birth"]] = rng.choice(BAD_DATES)
        elif kind == "bytes":
            record[col["last_name"]] = rng.choice(BAD_BYTES)
        elif kind == "no_id":
            record.update({col["source_record_id"]: "", col["city"]: f"місто {i}"})
        records.append(None if kind == "broken" else record)
    empty = dict.fromkeys(source.columns.values(), "")
    records += [empty, {**empty, col["source_record_id"]: "F-MB", col["street"]: MEGABYTE}]
    return records


def encoded_with_bytes(text: str, chunks: list[bytes]) -> bytes:
    """text as UTF-8, each BYTES_MARK replaced by the next raw byte string."""
    parts = text.encode("utf-8").split(BYTES_MARK.encode("utf-8"))
    return b"".join(part + (chunks[n] if n < len(chunks) else b"") for n, part in enumerate(parts))


def _marked(record: dict[str, object], chunks: list[bytes]) -> dict[str, object]:
    def one(value: object) -> object:
        if isinstance(value, bytes):
            chunks.append(value)
            return BYTES_MARK
        return value

    return {k: one(v) for k, v in record.items()}


def write_fuzzed_csv(source: SourceConfig, records: list[dict[str, object] | None], rng: random.Random) -> int:
    """A broken slot is a blank line, which is no record. Returns the number of records."""
    out, chunks = io.StringIO(), []
    writer = csv.writer(out, delimiter=source.delimiter, lineterminator="\n")
    writer.writerow(source.columns.values())
    for record in records:
        if record is None:
            out.write("\n")
        else:
            writer.writerow(_marked(record, chunks).values())
    source.path.write_bytes(encoded_with_bytes(out.getvalue(), chunks))
    return sum(r is not None for r in records)


def array_lines(source: SourceConfig) -> list[str]:
    """JSONL lines holding an array, written once each: each is one malformed record, not its elements or none."""
    key = source.columns["source_record_id"]
    return [json.dumps([{key: "F-array-a"}, {key: "F-array-b"}]), "[]"]


def write_fuzzed_jsonl(source: SourceConfig, records: list[dict[str, object] | None], rng: random.Random) -> int:
    """A broken slot is a blank line (no record), a line that is no JSON object, or values that are no strings;
    a key with a null value is left out, as JSON writers do. Returns the number of records."""
    lines, chunks, names = [], [], list(source.columns.values())
    for n, record in enumerate(records):
        choice = "record" if record is not None else rng.choice(("blank", "not_object", "odd_values"))
        if choice == "blank":
            lines.append("  ")
        elif choice == "not_object":
            lines.append(rng.choice(NOT_JSON_OBJECTS).format(n=n))
        else:
            if choice == "odd_values":
                record = {c: rng.choice(ODD_JSON_VALUES) for c in names[1:3]} | {names[0]: f"F-odd{n}"}
            present = {k: v for k, v in _marked(record, chunks).items() if v is not None}
            lines.append(json.dumps(present, ensure_ascii=False))
    lines += array_lines(source)
    source.path.write_bytes("\ufeff".encode() + encoded_with_bytes("\n".join(lines) + "\n", chunks))
    return sum(bool(line.strip()) for line in lines)


def write_fuzzed_parquet(source: SourceConfig, records: list[dict[str, object] | None], rng: random.Random) -> int:
    """A broken slot is a row of nulls but its street; undecodable bytes go in as invalid UTF-8 strings.
    Returns the row count."""
    names = list(source.columns.values())
    street = source.columns["street"]
    rows = [record or {**dict.fromkeys(names), street: f"row {n}"} for n, record in enumerate(records)]

    def as_bytes(value: object) -> bytes | None:
        return value if isinstance(value, bytes) or value is None else str(value).encode("utf-8")

    columns = {n: pa.array([as_bytes(r[n]) for r in rows], pa.binary()).view(pa.string()) for n in names}
    pq.write_table(pa.table(columns), source.path)
    return len(rows)


FUZZ_WRITERS = {"csv": write_fuzzed_csv, "jsonl": write_fuzzed_jsonl, "parquet": write_fuzzed_parquet}


def test_fuzzed_rows_land_or_are_quarantined_with_a_reason_and_counts_reconcile(spark, tmp_path, monkeypatch):
    cfg = config_in(tmp_path)
    demo_data.generate(cfg, people=6, seed=5)
    cfg = with_source(cfg, "ro_shop", schema_drift="allow")  # lets the JSON values that are no strings in
    written = {}
    for n, source in enumerate(cfg.sources):
        records = fuzzed_records(source, rows=300, seed=20261107 + n)
        written[source.name] = FUZZ_WRITERS[source.format](source, records, random.Random(n))

    result = ingest.run(spark, cfg, run_id="fuzz")
    standardize.run(spark, cfg, run_id="fuzz")

    assert {s.source_system: s.read for s in result.sources} == written  # no record lost or split
    assert result.reconciled
    per_source = delta_io.query_delta(
        "SELECT r.source_system, r.rows_read, r.rows_landed, r.rows_quarantined, b.n AS in_bronze,"
        " q.n AS in_quarantine, q.with_reason FROM r"
        " JOIN (SELECT source_system, count(*) AS n FROM b GROUP BY source_system) b"
        " ON b.source_system = r.source_system"
        " LEFT JOIN (SELECT source_system, count(*) AS n, count(reason) AS with_reason FROM q GROUP BY source_system) q"
        " ON q.source_system = r.source_system"
        " WHERE r.run_id = 'fuzz'",
        r=cfg.tables.ingest_runs,
        b=cfg.tables.bronze,
        q=cfg.tables.quarantine,
    ).to_pylist()
    assert len(per_source) == 3
    for row in per_source:
        assert row["rows_read"] == row["rows_landed"] + row["rows_quarantined"], row["source_system"]
        assert (row["in_bronze"], row["in_quarantine"]) == (row["rows_landed"], row["rows_quarantined"]), row
        assert row["with_reason"] == row["in_quarantine"]
    reasons = {s.source_system: set(s.reasons) for s in result.sources}
    assert reasons == {
        "ua_crm": {"bad_encoding", "missing_source_id", "unparseable_date"},
        "ro_shop": {"bad_encoding", "missing_source_id", "unparseable_date", "malformed_record"},
        "eu_loyalty": {"bad_encoding", "missing_source_id", "unparseable_date"},
    }
    held = delta_io.query_delta("SELECT raw_record, reason FROM q", q=cfg.tables.quarantine).to_pylist()
    arrays = array_lines(cfg.source("ro_shop"))
    assert {(r["raw_record"], r["reason"]) for r in held if r["raw_record"] in arrays} == {
        (line, "malformed_record") for line in arrays
    }
    assert delta_io.row_count(cfg.tables.silver) == sum(r["rows_landed"] for r in per_source)
    for name in written:
        landed = delta_io.query_delta(
            f"SELECT last_name, street, city FROM b WHERE source_system = '{name}'", b=cfg.tables.bronze
        )
        values = {v for column in landed.columns for v in column.to_pylist()}
        assert values >= LANDS_AS_WRITTEN, name
    assert_query_exports_safe_csv(cfg, tmp_path / "bronze.csv", monkeypatch)


def assert_query_exports_safe_csv(cfg: PipelineConfig, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m jobs.query --csv` over the fuzzed lakehouse: no cell is a formula."""
    monkeypatch.setenv("IDRES_LAKEHOUSE", str(cfg.lakehouse))
    sql = "SELECT first_name, last_name, street, city, email FROM bronze WHERE source_record_id <> 'F-MB'"
    query.main(["--csv", str(out), sql])  # the 1 MiB value is over the csv module's default field limit
    with out.open(encoding="utf-8", newline="") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    assert any(c.startswith("'=HYPERLINK(") for c in cells)
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
