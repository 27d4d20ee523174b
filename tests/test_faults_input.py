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
from deltalake import DeltaTable

from jobs import delta_io, demo_data, ingest, query, standardize
from jobs.config import DEFAULT_CONF_DIR, PipelineConfig, load_config
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
    ],
    ids=["missing_file", "added_column", "renamed_column", "retyped_parquet", "retyped_jsonl"],
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
    files = [pq.read_schema(f.removeprefix("file://")) for f in DeltaTable(str(cfg.tables.ingest_runs)).file_uris()]
    assert any(pa.types.is_string_view(t) for schema in files for t in schema.types)  # the bug's precondition
    sql = "SELECT count(*) AS n FROM ingest_runs WHERE source_system = 'eu_loyalty' AND run_id LIKE 'allow%'"
    assert query.query(cfg, sql)["n"][0].as_py() == 1


def test_ignored_columns_are_no_drift_and_bad_drift_settings_name_file_and_key(clean_batch, tmp_path):
    source = dataclasses.replace(clean_batch.source("eu_loyalty"), ignored_columns=("loyalty_tier",))
    _, path = added_parquet(clean_batch, tmp_path)
    ingest.check_source_schema(dataclasses.replace(source, path=path))  # does not raise
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    data = yaml.safe_load((conf / "sources.yaml").read_text(encoding="utf-8"))
    data["sources"][0]["schema_drift"] = "ignore"
    data["sources"][2]["ignored_columns"] = ["given_name", 7]
    data["sources"][1]["ignored_columns"] = ["nume"]
    (conf / "sources.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert sorted(err.value.problems) == [
        "sources.yaml: sources[0] (ua_crm).schema_drift: must be one of fail, allow_added, allow, got 'ignore'",
        "sources.yaml: sources[1] (ro_shop).ignored_columns: 'nume' is also mapped under columns",
        "sources.yaml: sources[2] (eu_loyalty).ignored_columns: must be a list of source column names",
    ]


# Values a hostile or broken extract carries. Every one is text a row may hold; none may crash ingest.
INJECTIONS = ('=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "@SUM(1)", "-1+1", "\t=1+1")
LOOKALIKES = ("Шевчеnко", "Ivanоv", "Коваль" + "\u0301", "Pаvlо")  # Latin n, Cyrillic о / а mixed in
AWKWARD = ('O"Brien', "a;b;c", "  padded  ", "emoji 😀", "\u200bzero width", "two\nlines", 'quoted;"x"\r\nbreak')
BAD_DATES = ("2023-02-30", "31.04.2024", "30.02.2023", "00.00.0000", "1.1.1")
BAD_BYTES = ("Ковальчук".encode("cp1251"), "Müller".encode("latin-1"), b"\xff\xfe")
MEGABYTE = "Я" * (1 << 19)  # 1 MiB in UTF-8


def fuzz_ua_extract(path: Path, columns: list[str], rows: int, seed: int) -> int:
    """Write a seeded, hostile ua_crm extract; returns the number of records (blank lines are not records)."""
    rng = random.Random(seed)
    placeholder = "\u0000BYTES\u0000"
    out, bad_bytes, records = io.StringIO(), [], 0
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(columns)
    for i in range(rows):
        row = dict.fromkeys(columns, "")
        row.update(kod_kliienta=f"UA-F{i}", prizvyshche="Бондар", imia="Анна", data_narodzhennia="01.02.1980")
        row["onovleno"] = "01.03.2025 10:15"
        kind = rng.choice(("injection", "lookalike", "awkward", "nfd", "date", "bytes", "no_id", "blank"))
        if kind == "injection":
            row[rng.choice(("prizvyshche", "imia", "misto", "email", "adresa"))] = rng.choice(INJECTIONS)
        elif kind == "lookalike":
            row["prizvyshche"] = rng.choice(LOOKALIKES)
        elif kind == "awkward":
            row[rng.choice(("prizvyshche", "adresa", "misto"))] = rng.choice(AWKWARD)
        elif kind == "nfd":
            row["imia"] = unicodedata.normalize(rng.choice(("NFD", "NFC")), "Йосип Ёлкін")
        elif kind == "date":
            row["data_narodzhennia"] = rng.choice(BAD_DATES)
        elif kind == "bytes":
            row["prizvyshche"] = placeholder
            bad_bytes.append(rng.choice(BAD_BYTES))
        elif kind == "no_id":
            row.update(kod_kliienta="", misto=f"місто {i}")
        else:
            out.write("\n")
            continue
        writer.writerow(row.values())
        records += 1
    writer.writerow([""] * len(columns))  # an empty record: only delimiters
    writer.writerow([MEGABYTE if c == "adresa" else "UA-MB" if c == "kod_kliienta" else "" for c in columns])
    encoded = out.getvalue().encode("utf-8").split(placeholder.encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(part + (bad_bytes[n] if n < len(bad_bytes) else b"") for n, part in enumerate(encoded)))
    return records + 2


def test_fuzzed_rows_land_or_are_quarantined_with_a_reason_and_counts_reconcile(spark, tmp_path, monkeypatch):
    cfg = config_in(tmp_path)
    demo_data.generate(cfg, people=6, seed=5)
    source = cfg.source("ua_crm")
    written = fuzz_ua_extract(source.path, list(source.columns.values()), rows=300, seed=20261107)

    result = ingest.run(spark, cfg, run_id="fuzz")
    standardize.run(spark, cfg, run_id="fuzz")

    ua = next(s for s in result.sources if s.source_system == "ua_crm")
    assert ua.read == written  # no record lost or split
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
        in_quarantine = row["in_quarantine"] or 0
        assert (row["in_bronze"], in_quarantine) == (row["rows_landed"], row["rows_quarantined"])
        assert row["with_reason"] == row["in_quarantine"]
    assert set(ua.reasons) == {"bad_encoding", "missing_source_id", "unparseable_date"}
    assert delta_io.row_count(cfg.tables.silver) == sum(r["rows_landed"] for r in per_source)
    landed = delta_io.query_delta(
        "SELECT last_name, street, city FROM b WHERE source_system = 'ua_crm'", b=cfg.tables.bronze
    )
    values = {v for column in landed.columns for v in column.to_pylist()}
    assert {'=HYPERLINK("http://x","y")', 'O"Brien', "a;b;c", "two\nlines", 'quoted;"x"\r\nbreak', MEGABYTE} <= values
    assert_query_exports_safe_csv(cfg, tmp_path / "bronze.csv", monkeypatch)


def assert_query_exports_safe_csv(cfg: PipelineConfig, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m jobs.query --csv` over the fuzzed lakehouse: no cell is a formula."""
    monkeypatch.setenv("IDRES_LAKEHOUSE", str(cfg.lakehouse))
    sql = "SELECT first_name, last_name, street, city, email FROM bronze WHERE source_record_id <> 'UA-MB'"
    query.main(["--csv", str(out), sql])  # the 1 MiB value is over the csv module's default field limit
    with out.open(encoding="utf-8", newline="") as fh:
        cells = [cell for row in csv.reader(fh) for cell in row]
    assert any(c.startswith("'=HYPERLINK(") for c in cells)
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
