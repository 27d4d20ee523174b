"""Subject rights (export, erasure) and the analysts' query command, on real Delta tables after a real run."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable, write_deltalake
from pyspark.sql import functions as F

from jobs import delta_io, ingest, query, subject_rights, unify
from jobs.errors import IdresError
from jobs.runner import INCIDENTS_DIR, record_incident
from tests.conftest import copy_lakehouse
from tests.test_resolve import BRIDGE, IRYNA, PEOPLE, bronze_rows, silver_rows
from tests.test_unify import GRANTS, publish

README = Path(__file__).resolve().parents[1] / "README.md"
# The bridging record carries values nobody else has; they must not survive its erasure anywhere.
CANARIES = ("zzyzxqa", "qqcanary")
CANARY_BRIDGE = {**BRIDGE, "middle_name": "Zzyzxqa", "street": "Qqcanary 77"}
HAND = [*PEOPLE, *IRYNA, CANARY_BRIDGE]
IRYNA_IDS = ("ro_shop:R-1", "eu_loyalty:LM-9", "ua_crm:UA-9")


@pytest.fixture(scope="module")
def pristine(spark, trained, tmp_path_factory):
    """The hand records among the demo population, published by run-1 (with the population's consent ledger, which
    an erasure's gold suites check lineage against); tests change copies of it only."""
    population = delta_io.read_delta(spark, trained.tables.silver).select(*trained.policy.silver_columns)
    population_consent = delta_io.read_delta(spark, trained.tables.effective_consent)
    root = tmp_path_factory.mktemp("subject-rights")
    cfg = trained.with_paths(lakehouse=root / "lake", reports=root / "reports")
    cfg = dataclasses.replace(cfg, models=trained.models)
    population_ledger = delta_io.read_delta(spark, trained.tables.consent_ledger)
    publish(spark, cfg, population, population_consent, GRANTS, "run-1", hand=HAND, population_ledger=population_ledger)
    return cfg


@pytest.fixture(scope="module")
def published(pristine, tmp_path_factory):
    """A copy of the pristine lakehouse that this module's tests share (the erasure test changes it)."""
    return copy_lakehouse(pristine, tmp_path_factory.mktemp("subject-rights-shared"))


def profile_of(spark, cfg, record_id: str) -> str | None:
    rows = delta_io.read_delta(spark, cfg.tables.record_profiles).where(F.col("record_id") == record_id).collect()
    return rows[0]["profile_id"] if rows else None


def readme_queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)\n```", README.read_text(encoding="utf-8"), flags=re.S)


def test_query_answers_the_readme_questions(spark, published):
    per_region, multi_region, marketing = readme_queries()
    profiles = delta_io.read_delta(spark, published.tables.profiles)
    by_region = profiles.select(F.explode("regions").alias("region")).groupBy("region").count().collect()
    assert {r["region"]: r["profiles"] for r in query.query(published, per_region).to_pylist()} == {
        r["region"]: r["count"] for r in by_region
    }
    answer = query.query(published, multi_region).to_pylist()
    assert answer == [{"customers": profiles.where(F.size("regions") >= 2).count()}]
    assert answer[0]["customers"] >= 1  # Oleksandr is in the UA CRM and the EU loyalty system
    permitted = delta_io.read_delta(spark, published.tables.profile_permissions).where(
        "purpose = 'marketing_email' AND allowed"
    )
    expected = profiles.where("marketing_email IS NOT NULL").join(permitted, "profile_id", "left_semi")
    assert sorted(r["profile_id"] for r in query.query(published, marketing).to_pylist()) == sorted(
        r["profile_id"] for r in expected.collect()
    )


def test_make_query_hands_the_sql_to_the_command_as_typed():
    """Quotes, `$` and backticks in SQL= reached the shell inside double quotes: identifiers lost their quotes,
    `$n` became nothing and a `$(...)` ran; a line break split the recipe."""
    sql = """SELECT "region", count(*) AS $n, `x`, $(id)\nFROM profiles WHERE region = 'UA' AND c LIKE '%\\_%'"""
    csv_out = "out $1.csv"
    make = subprocess.run(
        ["make", "-n", "-s", "query", f"SQL={sql}", f"CSV={csv_out}"],
        cwd=README.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    command = make.stdout.strip().splitlines()[-1]
    prefix = f"{README.parent}/.venv/bin/python -m jobs.query"
    assert command.startswith(prefix)
    # the arguments as bash hands them to the command (a line break as bash's $'\n')
    words = subprocess.run(
        ["bash", "-c", "printf '%s\\0' " + command.removeprefix(prefix)], capture_output=True, text=True, check=True
    ).stdout.split("\0")[:-1]
    assert words == ["--csv", csv_out, sql]


def test_query_csv_cells_cannot_inject_formulas():
    cells = [
        '=HYPERLINK("http://x","y")',
        "+380671234567",
        "@SUM(1)",
        "-1+1",
        "\t=1",
        "\r=1",
        "\tOlena",
        '＝HYPERLINK("http://x","y")',  # full-width
        "＠SUM(1)",
        ' =HYPERLINK("http://x","y")',
        "\u3000=1+1",  # after an ideographic space
        "Olena",
        "-12.5",
        " 42",
        "O'Neil = 1",
        "\ufeff=1+1",  # after a byte order mark
        "\u200b=1+1",  # after a zero-width space
        "Kyiv;=1+1;",  # a spreadsheet splitting at ; would start a cell with =: quoted, it keeps the line whole
        "\t-1",  # a number opened by a tab or a carriage return
        "\r-1",
        "\x00=1",  # after control characters
        "\x1b=1",
    ]
    out = io.StringIO()
    query.write_csv(pa.table({"value": cells, "n": list(range(len(cells)))}), out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert [r[0] for r in rows] == [
        "value",
        '\'=HYPERLINK("http://x","y")',
        "'+380671234567",
        "'@SUM(1)",
        "'-1+1",
        "'\t=1",
        "'\r=1",
        "'\tOlena",
        '\'＝HYPERLINK("http://x","y")',
        "'＠SUM(1)",
        '\' =HYPERLINK("http://x","y")',
        "'\u3000=1+1",
        "Olena",
        "-12.5",
        " 42",
        "O'Neil = 1",
        "'\ufeff=1+1",
        "'\u200b=1+1",
        "Kyiv;=1+1;",
        "'\t-1",
        "'\r-1",
        "'\x00=1",
        "'\x1b=1",
    ]
    assert '"Kyiv;=1+1;","17"' in out.getvalue().splitlines()  # every cell quoted, numbers too


def test_query_csv_header_cells_cannot_inject_formulas():
    import duckdb

    con = duckdb.connect()
    con.register("cities", pa.table({"city": ["\t=1+1", "Kyiv"]}))
    out = io.StringIO()
    query.write_csv(con.sql("PIVOT cities ON city USING count(*) ORDER BY ALL").to_arrow_table(), out)
    assert sorted(next(csv.reader(io.StringIO(out.getvalue())))) == ["'\t=1+1", "Kyiv"]


def test_query_csv_keeps_each_value_under_its_own_header_when_names_repeat():
    out = io.StringIO()
    result = pa.table([pa.array(["a"]), pa.array(["b"]), pa.array(["=1+1"])], names=["profile_id", "profile_id", "y"])
    query.write_csv(result, out)  # what `SELECT p.*, m.* FROM profiles p JOIN ... USING` gives
    assert list(csv.reader(io.StringIO(out.getvalue()))) == [["profile_id", "profile_id", "y"], ["a", "b", "'=1+1"]]


def test_the_analysts_sql_reaches_no_file_beyond_the_tables(cfg, tmp_path):
    import duckdb

    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n", encoding="utf-8")
    for sql in (
        f"COPY (SELECT '=1+1' AS a) TO '{tmp_path / 'written.csv'}'",  # past defusedcsv
        f"SELECT * FROM read_csv('{outside}')",
        "SET enable_external_access = true",
    ):
        with pytest.raises(duckdb.Error):  # the sandbox itself, past reading_statement's check
            query.connect(cfg).sql(sql)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".csv") == ["outside.csv"]


def test_the_analysts_sql_is_one_reading_statement_and_has_no_temporary_directory(cfg, tmp_path, monkeypatch):
    import duckdb

    # DuckDB keeps its temporary directory (.tmp in the working directory) open to a connection whose external
    # access is off; EXPORT DATABASE would create it and a COPY fill it with table copies no erasure finds.
    monkeypatch.chdir(tmp_path)
    for sql in ("EXPORT DATABASE '.tmp'", "COPY (SELECT 1 AS a) TO '.tmp/a.csv'"):
        with pytest.raises(query.QueryError):
            query.query(cfg, sql)
        with pytest.raises(duckdb.PermissionException):  # refused by the sandbox too, not only by the check
            query.connect(cfg).sql(sql)
    with pytest.raises(query.QueryError, match="of type ATTACH"):
        query.query(cfg, "ATTACH ':memory:' AS m")
    with pytest.raises(query.QueryError, match="of type MULTI"):  # DuckDB's kind for any statement with a PIVOT
        query.query(cfg, "COPY (PIVOT (SELECT 'kyiv' AS city) ON city USING count(*)) TO '.tmp/p.csv'")
    with pytest.raises(query.QueryError, match="one SQL statement; this is 2"):
        query.query(cfg, "SELECT 1 AS a; SELECT 2 AS b")
    for nothing in ("", "  ", "-- a comment"):  # make query without SQL=
        with pytest.raises(query.QueryError, match=r"no SQL given: make query SQL='SELECT \.\.\.'"):
            query.query(cfg, nothing)
    # EXPLAIN ANALYZE runs what it explains
    for explained, kind in (
        ("ANALYZE CREATE TABLE t AS SELECT 1", "CREATE"),
        ("/* a */ (ANALYZE) CHECKPOINT", "CALL"),
        ("/* /* */ SELECT 1 -- */ ANALYZE CREATE TABLE t AS SELECT 42", "CREATE"),  # DuckDB's comments nest
    ):
        with pytest.raises(query.QueryError, match=f"of type {kind}"):
            query.query(cfg, f"EXPLAIN {explained}")
    with pytest.raises(query.QueryError, match="of type MULTI"):
        query.query(cfg, "/* /* */ SELECT 1 -- */ COPY (PIVOT (SELECT 'kyiv' AS c) ON c USING count(*)) TO 'p.csv'")
    assert query.query(cfg, "EXPLAIN ANALYZE SELECT 1 AS a").num_rows == 1
    assert query.connect(cfg).sql("SELECT current_setting('allowed_directories') AS d").fetchall() == [([],)]
    assert list(tmp_path.iterdir()) == []
    assert query.query(cfg, "PIVOT (SELECT 'kyiv' AS city) ON city USING count(*)").to_pylist() == [{"kyiv": 1}]
    pivot = "PIVOT (SELECT 'kyiv' AS city) ON city USING count(*)"
    for reading in (f"-- per city\n{pivot}", f"/* a note */ SELECT * FROM ({pivot})", f"DESCRIBE ({pivot})"):
        assert query.query(cfg, reading).num_rows == 1, reading
    assert query.query(cfg, f"DESC ({pivot})").num_rows == 1
    assert query.query(cfg, f"WITH p AS ({pivot}) SELECT kyiv AS n FROM p").to_pylist() == [{"n": 1}]
    # A PIVOT makes any statement MULTI: what it explains, or writes after a WITH list, is checked all the same
    with pytest.raises(query.QueryError, match="of type MULTI"):
        query.query(cfg, f"EXPLAIN ANALYZE CREATE TABLE t AS {pivot}")
    with pytest.raises(query.QueryError, match=r"this one holds INSERT$"):
        query.query(cfg, f"WITH p AS ({pivot}) INSERT INTO x SELECT 1")


def test_the_query_command_shows_duckdbs_message_on_the_statement_but_none_that_may_quote_a_value(
    cfg, monkeypatch, capsys
):
    monkeypatch.setenv("IDRES_LAKEHOUSE", str(cfg.lakehouse))
    for sql, shown in (
        ("SELECT CAST('zqxcanary@example.org' AS INTEGER) AS n", "DuckDB ConversionException (its message may quote"),
        ("SELECT no_such_column FROM (SELECT 1 AS a)", 'Referenced column "no_such_column" not found'),
        ("SELEKT 1", 'syntax error at or near "SELEKT"'),
        (  # a PIVOT names columns by values, which a binder's message lists as candidates
            "SELECT zqx FROM (PIVOT (SELECT 'zqxcanary' AS n) ON n USING count(*))",
            "DuckDB BinderException (a PIVOT names columns by values",
        ),
    ):
        with pytest.raises(SystemExit) as exited:
            query.main([sql])
        printed = capsys.readouterr()
        assert (exited.value.code, shown in printed.err, printed.out) == (2, True, ""), sql
        assert "zqxcanary" not in printed.err


def test_the_query_tables_shows_control_characters_as_escapes_never_to_the_terminal(cfg, monkeypatch, capsys):
    """An escape sequence in a landed value could retitle the analyst's terminal or write its clipboard."""
    monkeypatch.setenv("IDRES_LAKEHOUSE", str(cfg.lakehouse))
    query.main(["SELECT 'Київ' || chr(27) || ']52;c;aGk=' || chr(7) || chr(8238) AS \"city\x1b[2J\""])
    printed = capsys.readouterr().out
    assert "Київ\\x1b]52;c;aGk=\\x07\\u202e" in printed and "city\\x1b[2J" in printed
    assert not {"\x1b", "\x07", "\u202e"} & set(printed)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    query.main(["--format", "csv", "SELECT 'Київ' || chr(27) || ']0;x' || chr(7) AS city"])
    assert capsys.readouterr().out.splitlines() == ['"city"', '"Київ\\x1b]0;x\\x07"']


def test_the_query_table_shows_text_and_decimals_as_they_are(cfg, monkeypatch, capsys):
    """tabulate read text that looks like a number as one: 0123.50 came out as 123.5, 1_000 as 1000."""
    monkeypatch.setenv("IDRES_LAKEHOUSE", str(cfg.lakehouse))
    query.main(["SELECT '0123.50' AS code, '1_000' AS n, 'Nan' AS name, 12345678901234567.89::DECIMAL(38, 2) AS a"])
    assert capsys.readouterr().out.splitlines()[2].split() == ["0123.50", "1_000", "Nan", "12345678901234567.89"]


def test_the_query_command_streams_its_result_and_fails_cleanly_on_what_it_cannot_write_or_show(
    cfg, monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("IDRES_LAKEHOUSE", str(cfg.lakehouse))
    # A time past Python's year 9999 (a landed 9999-12-31 west of UTC) is shown as text, not an OverflowError.
    query.main(["SELECT TIMESTAMPTZ '9999-12-31 23:59:59-05' AS t, DATE '12000-01-01' AS d"])
    assert capsys.readouterr().out.splitlines()[2].split() == ["10000-01-01", "04:59:59.000000+0000", "12000-01-01"]
    query.main(["--format", "csv", "SELECT [DATE '12000-01-01'] AS l, {'d': DATE '12000-01-02', 'n': 1} AS s"])
    assert capsys.readouterr().out.splitlines() == ['"l","s"', "\"['12000-01-01']\",\"{'d': '12000-01-02', 'n': 1}\""]
    query.main(["--max-rows", "3", "SELECT range AS n FROM range(10)"])
    assert capsys.readouterr().out.splitlines()[2:] == [
        "0",
        "1",
        "2",
        "(the first 3 rows; more not shown: --max-rows 0 shows all, --csv OUT writes all)",
    ]

    out = tmp_path / "n.csv"
    query.main(["--csv", str(out), "SELECT range AS n FROM range(200000)"])  # several batches
    assert capsys.readouterr().out == f"200000 row(s) written to {out}\n"
    lines = out.read_text(encoding="utf-8").splitlines()
    assert (len(lines), lines[0], lines[-1]) == (200_001, '"n"', '"199999"')
    before = out.read_bytes()
    failing = "SELECT CAST(CASE WHEN range = 150000 THEN 'x' ELSE range::VARCHAR END AS INTEGER) FROM range(200000)"
    log = cfg.lakehouse / "gold" / "some_table" / "_delta_log.json"  # stands for a table's files
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("{}\n", encoding="utf-8")
    for argv, message in (
        (["--csv", str(out), failing], "query: DuckDB failed computing the result (its message"),  # in batch 3
        (["--csv", str(log), "SELECT 1 AS x"], "is inside the lakehouse folder"),
        (["--csv", str(tmp_path / "no" / "n.csv"), "SELECT 1 AS x"], "query: cannot write"),
        (["SELECT '\udcff' AS x"], "query: the SQL is not UTF-8 text"),  # a byte no UTF-8, as Python passes it
        (["--max-rows", "-1", "SELECT 1 AS x"], "must be 0 or more, got -1"),
    ):
        with pytest.raises(SystemExit) as exited:
            query.main(argv)
        printed = capsys.readouterr()
        assert (exited.value.code, message in printed.err, printed.out) == (2, True, ""), argv
    assert out.read_bytes() == before and log.read_text(encoding="utf-8") == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["n.csv"]  # no part-written export left


def canary_hits(root: Path) -> list[str]:
    """Every file under root whose content (Parquet decoded cell by cell) holds a canary value."""
    hits = []
    for f in root.rglob("*"):
        if not f.is_file():
            continue
        if f.suffix == ".parquet":
            text = json.dumps(pq.read_table(f).to_pylist(), default=str, ensure_ascii=False)
        else:
            text = f.read_bytes().decode("utf-8", errors="replace")
        if any(c in text.lower() for c in CANARIES):
            hits.append(str(f.relative_to(root)))
    return hits


def test_export_holds_every_source_record_then_erasure_leaves_no_trace(spark, published):
    cfg = published
    iryna = profile_of(spark, cfg, "ua_crm:UA-9")
    assert iryna and {profile_of(spark, cfg, r) for r in IRYNA_IDS} == {iryna}
    assert canary_hits(cfg.lakehouse)  # the canaries are there before the erasure

    # A pair the model scored below the cluster threshold links one of her records with someone else's.
    near_miss = delta_io.arrow_dataset(cfg.tables.pairwise_matches).head(1)
    for side, record in zip(subject_rights.MATCH_SIDES, ("ua_crm:UA-9", "ua_crm:UA-1"), strict=True):
        near_miss = near_miss.set_column(near_miss.schema.get_field_index(side), side, pa.array([record]))
    write_deltalake(str(cfg.tables.pairwise_matches), near_miss, mode="append")

    export_path = subject_rights.run(spark, cfg, run_id="sr-1", action="export", profile_id=iryna)
    export = json.loads(export_path.read_text(encoding="utf-8"))
    sections = (
        "source_records_as_landed",
        "source_records_standardized",
        "source_records_admitted",
        "record_profiles",
        "profile_sources",
    )
    for section in sections:
        assert {f"{r['source_system']}:{r['source_record_id']}" for r in export[section]} == set(IRYNA_IDS), section
    assert {r["purpose"] for r in export["profile_values_lineage"]} == {"profile_unification"}
    assert all(r["lawful_basis"] and r["source_record_id"] for r in export["profile_values_lineage"])
    assert export["match_evidence"] and export["profiles"][0]["profile_id"] == iryna
    # the whole profile is the subject's, so are its identity events
    assert [(e["event_type"], e["records"]) for e in export["identity_events"]] == [("created", len(IRYNA_IDS))]
    # pairs that link the subject's records to each other; a pair with someone else's record is theirs too
    assert {r[side] for r in export["match_evidence"] for side in subject_rights.MATCH_SIDES} <= set(IRYNA_IDS)
    assert canary_hits(cfg.reports) == [str(export_path.relative_to(cfg.reports))]  # the export quotes the bridge

    # two failed jobs left incident files: one quotes the subject's value, the other quotes nobody's
    quoting = record_incident(cfg, "unify", "r-1", ValueError(f"cannot parse {CANARY_BRIDGE['middle_name']!r}"))
    unrelated = record_incident(cfg, "unify", "r-2", ValueError("cannot parse 'x'"))
    assert canary_hits(cfg.lakehouse / INCIDENTS_DIR) == [quoting.name]

    # a killed Spark job left a Splink table quoting her in a lasting checkpoint dir
    checkpoints = cfg.lakehouse.parent / "checkpoints"
    left = checkpoints / "app-1" / "__splink__df_concat_with_tf_1" / "part-0.parquet"
    left.parent.mkdir(parents=True)
    pq.write_table(pa.table({"middle_name": [CANARY_BRIDGE["middle_name"]]}), left)
    # and one that names her record by its unique id only (scored pairs hold no compared value)
    pairs_left = checkpoints / "app-1" / "__splink__df_predict_2" / "part-0.parquet"
    pairs_left.parent.mkdir(parents=True)
    pq.write_table(pa.table({"unique_id_l": ["ua_crm:UA-9"], "unique_id_r": ["ua_crm:UA-1"]}), pairs_left)
    # and one the kill cut short: its file has no footer, so nothing proves it does not quote her
    cut_short = checkpoints / "__splink__df_blocked_3" / "part-0.parquet"
    cut_short.parent.mkdir(parents=True)
    pq.write_table(pa.table({"middle_name": [CANARY_BRIDGE["middle_name"]]}), cut_short)
    cut_short.write_bytes(cut_short.read_bytes()[:-12])
    # and another application shares the checkpoint dir: its files are not the erasure's to delete
    other_app = checkpoints / "app-2" / "extract.csv"
    other_app.parent.mkdir()
    other_app.write_text(f"id;middle_name\n1;{CANARY_BRIDGE['middle_name']}\n", encoding="utf-8")
    spark_settings = dataclasses.replace(
        cfg.spark, conf={**cfg.spark.conf, "spark.checkpoint.dir": f"file:{checkpoints}"}
    )
    cfg = dataclasses.replace(cfg, spark=spark_settings)

    certificate_path = subject_rights.run(spark, cfg, run_id="sr-2", action="erase", record=["ua_crm:UA-9"])
    assert canary_hits(cfg.lakehouse) == [] and canary_hits(cfg.reports) == []
    assert canary_hits(checkpoints) == ["app-2/extract.csv"] and not left.parent.exists()
    assert not pairs_left.parent.exists() and not cut_short.parent.exists()
    assert not quoting.exists() and unrelated.exists() and not export_path.exists()
    certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
    assert certificate["checkpoint_splink_tables_removed"] == 3
    assert certificate["scan"]["hits"] == 0 and certificate["scan"]["values_checked"] >= len(CANARIES)
    assert certificate["source_records_erased"] == 1 and len(certificate["certificate_sha256"]) == 64
    assert certificate["re_resolution"] == "published: the gold suites passed it"
    assert certificate["incident_files_removed"] == 1 and certificate["export_files_removed"] == 1
    assert {"bronze", "silver", "admitted", "pairwise_matches", "profile_lineage"} <= set(certificate["rows_deleted"])
    assert certificate["rows_deleted"]["bronze"] == 1
    assert not any(c in certificate_path.read_text(encoding="utf-8").lower() for c in CANARIES)
    assert "UA-9" not in certificate_path.read_text(encoding="utf-8")
    versions = {name: delta_io.table_version(path) for name, path in cfg.tables.all().items()}
    # Airflow clears the finished task: the rerun returns the run's certificate and changes nothing.
    assert subject_rights.run(spark, cfg, run_id="sr-2", action="erase", record=["ua_crm:UA-9"]) == certificate_path
    assert {name: delta_io.table_version(path) for name, path in cfg.tables.all().items()} == versions
    # The run id given again for another subject: refused, not answered with this subject's certificate.
    with pytest.raises(IdresError, match="run id sr-2 has erased another subject already"):
        subject_rights.run(spark, cfg, run_id="sr-2", action="erase", record=["ua_crm:UA-1"])
    assert profile_of(spark, cfg, "ua_crm:UA-1") is not None
    # A certificate written before requests were fingerprinted is still the answer to its rerun.
    older = {k: v for k, v in certificate.items() if k != "request_sha256"}
    certificate_path.write_text(json.dumps(older), encoding="utf-8")
    assert subject_rights.run(spark, cfg, run_id="sr-2", action="erase", record=["ua_crm:UA-9"]) == certificate_path
    for name, path in cfg.tables.all().items():  # the purge's own commits name the run too
        if delta_io.table_exists(path):
            assert all("run_id" in c and "job" in c for c in DeltaTable(str(path)).history()), name

    # what the erased record bridged is re-clustered: Iryna's two remaining records part again
    assert profile_of(spark, cfg, "ua_crm:UA-9") is None
    assert profile_of(spark, cfg, "ro_shop:R-1") != profile_of(spark, cfg, "eu_loyalty:LM-9")

    # the next ingest does not land the subject again, and keeps neither its id nor its values
    erased = delta_io.read_delta(spark, cfg.tables.erasure_register)
    validated = (
        bronze_rows(spark, [CANARY_BRIDGE, PEOPLE[0]])
        .withColumn(ingest.REASON, F.lit(None).cast("string"))
        .withColumn(ingest.CORRUPT, F.lit(None).cast("string"))
        .withColumn(ingest.SOURCE_FILE, F.lit("x"))
        .transform(ingest.suppress_erased_subjects, erased)
    )
    assert {(r["source_record_id"], r[ingest.REASON]) for r in validated.collect()} == {
        ("UA-9", ingest.ERASED_SUBJECT),
        ("UA-1", None),
    }
    quarantined = ingest.to_quarantine(validated, F.lit("raw"), "r", datetime(2026, 1, 1))
    assert [(r["source_record_id"], r["raw_record"], r["reason"]) for r in quarantined.collect()] == [
        (None, None, ingest.ERASED_SUBJECT)
    ]


def test_an_erasure_whose_re_resolution_the_gold_suites_refuse_publishes_none_of_it(spark, pristine, tmp_path):
    cfg = copy_lakehouse(pristine, tmp_path)
    cfg = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, max_cluster_size=1))  # refuses any merge
    iryna = profile_of(spark, cfg, "ua_crm:UA-9")
    before = delta_io.read_delta(spark, cfg.tables.record_profiles).select("record_id", "profile_id")
    profiles_before = {r[0] for r in delta_io.read_delta(spark, cfg.tables.profiles).select("profile_id").collect()}
    expected = spark.createDataFrame(before.where(F.col("profile_id") != iryna).collect(), before.schema)

    certificate_path = subject_rights.run(spark, cfg, run_id="sr-refused", action="erase", record=["ua_crm:UA-9"])

    certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
    assert certificate["re_resolution"].startswith("not published: ")
    assert "cluster_size" in certificate["re_resolution"]
    after = delta_io.read_delta(spark, cfg.tables.record_profiles).select("record_id", "profile_id")
    assert_df_equality(after, expected, ignore_row_order=True, ignore_nullable=True)  # Iryna's profile withdrawn
    profiles_after = {r[0] for r in delta_io.read_delta(spark, cfg.tables.profiles).select("profile_id").collect()}
    assert profiles_after == profiles_before - {iryna}  # no profile of the refused re-resolution published
    for name in ("profile_sources", "profile_lineage", "profile_permissions"):
        rows = delta_io.read_delta(spark, getattr(cfg.tables, name)).where(F.col("profile_id") == iryna)
        assert rows.count() == 0, name
    # The withdrawn profile held two other people's records too: its id stays issued, retired by the erasure.
    registry = delta_io.read_delta(spark, cfg.tables.profile_registry).where(F.col("profile_id") == iryna)
    assert [(r["status"], r["ended_run_id"], r["successor_profile_id"]) for r in registry.collect()] == [
        ("retired", "sr-refused", None)
    ]
    events = delta_io.read_delta(spark, cfg.tables.identity_events).where(F.col("profile_id") == iryna)
    assert sorted((e["run_id"], e["event_type"], e["records"]) for e in events.collect()) == [
        ("run-1", "created", 3),
        ("sr-refused", "retired", 0),
    ]
    assert canary_hits(cfg.lakehouse) == [] and canary_hits(cfg.reports) == []


def dies_after_the_deletions(*_args, **_kwargs):
    """In place of the re-resolution: an erasure that dies after deleting the subject's rows."""
    raise RuntimeError("injected: the job dies after its deletions")


def test_a_retried_erasure_finds_what_its_failed_first_attempt_deleted(spark, pristine, tmp_path, monkeypatch):
    cfg = copy_lakehouse(pristine, tmp_path)
    iryna = profile_of(spark, cfg, "ua_crm:UA-9")

    with monkeypatch.context() as patched:
        patched.setattr(subject_rights.resolve, "run", dies_after_the_deletions)
        with pytest.raises(RuntimeError, match="injected"):
            subject_rights.run(spark, cfg, run_id="sr-retry", action="erase", profile_id=iryna)
    assert profile_of(spark, cfg, "ua_crm:UA-9") is None  # the first attempt deleted the records
    assert canary_hits(cfg.lakehouse)  # and their values are still in the tables' history
    # A request under a new run id finds nothing left to scan for, and names the run to retry.
    with pytest.raises(IdresError, match=r"erased by run sr-retry.*run sr-retry wrote no certificate: retry it"):
        subject_rights.run(spark, cfg, run_id="sr-new", action="erase", record=["ua_crm:UA-9"])
    # Another subject's request under the unfinished run's id is refused before it erases anything.
    with pytest.raises(IdresError, match="run id sr-retry is erasing another subject"):
        subject_rights.run(spark, cfg, run_id="sr-retry", action="erase", record=["ua_crm:UA-1"])
    assert profile_of(spark, cfg, "ua_crm:UA-1") is not None

    # Airflow's retry: same run id, same request. It finds the profile's records and values as the first
    # attempt did, so it erases all three records and scans for the values, instead of failing or
    # certifying a scan for nothing.
    certificate_path = subject_rights.run(spark, cfg, run_id="sr-retry", action="erase", profile_id=iryna)
    certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
    assert certificate["source_records_erased"] == len(IRYNA_IDS)
    assert certificate["scan"]["values_checked"] >= len(CANARIES) and certificate["scan"]["hits"] == 0
    # the rows both attempts deleted: the retry's own deletions found nothing left
    assert {certificate["rows_deleted"][name] for name in ("bronze", "silver", "admitted")} == {len(IRYNA_IDS)}
    assert canary_hits(cfg.lakehouse) == []

    # A later request for the erased subject has nothing left to erase or check, and says so.
    with pytest.raises(IdresError, match=r"in the erasure register already \(erased by run sr-retry\).*certificate"):
        subject_rights.run(spark, cfg, run_id="sr-again", action="erase", record=["ua_crm:UA-9"])


def test_a_retry_whose_history_a_later_erasure_purged_says_what_is_left_to_check(
    spark, pristine, tmp_path, monkeypatch
):
    cfg = copy_lakehouse(pristine, tmp_path)
    export = subject_rights.run(spark, cfg, run_id="sr-x", action="export", record=["ua_crm:UA-9"])
    assert export.stat().st_mode & 0o777 == 0o600  # a dossier of personal data: its owner's alone

    with monkeypatch.context() as patched:
        patched.setattr(subject_rights.resolve, "run", dies_after_the_deletions)
        with pytest.raises(RuntimeError, match="injected"):
            subject_rights.run(spark, cfg, run_id="sr-a", action="erase", record=["ua_crm:UA-9"])
    subject_rights.run(spark, cfg, run_id="sr-b", action="erase", record=["ua_crm:UA-1"])  # purges every history
    assert export.exists()  # sr-b looked for its own subject's values only

    with pytest.raises(IdresError, match=r"erased by run sr-a\).*check the files this run's failed attempt named"):
        subject_rights.run(spark, cfg, run_id="sr-a", action="erase", record=["ua_crm:UA-9"])
    assert not export.exists()  # found by its record id, with no value left to look for


def test_an_erasure_killed_while_purging_history_is_finished_by_its_retry(spark, pristine, tmp_path, monkeypatch):
    cfg = copy_lakehouse(pristine, tmp_path)
    iryna = profile_of(spark, cfg, "ua_crm:UA-9")
    purge = delta_io.purge_history
    purged: list[Path] = []

    def dies_after_one(path, **kwargs):
        if purged:
            raise RuntimeError("injected: the job dies in the purge")
        purged.append(Path(path))
        return purge(path, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(delta_io, "purge_history", dies_after_one)
        with pytest.raises(RuntimeError, match="injected"):
            subject_rights.run(spark, cfg, run_id="sr-purge", action="erase", profile_id=iryna)
    assert len(purged) == 1 and canary_hits(cfg.lakehouse)  # one table purged, the others still hold the values

    # The operator starts a new run for the same request instead of retrying: it finishes the killed one's purge
    # first, then finds the subject erased already.
    with pytest.raises(IdresError, match="in the erasure register already"):
        subject_rights.run(spark, cfg, run_id="sr-purge-2", action="erase", record=["ua_crm:UA-9"])
    assert canary_hits(cfg.lakehouse) == []
    finished = subject_rights.certificate_of_run(cfg, "sr-purge")
    assert finished is not None

    # and Airflow's retry of the killed run gets the certificate the purge wrote
    certificate_path = subject_rights.run(spark, cfg, run_id="sr-purge", action="erase", profile_id=iryna)
    assert certificate_path == finished
    certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
    assert certificate["source_records_erased"] == len(IRYNA_IDS) and certificate["rows_deleted"]["bronze"] == 3
    assert certificate["scan"]["values_checked"] >= len(CANARIES) and certificate["scan"]["hits"] == 0
    assert set(certificate["table_versions_after"]) == {n for n, p in cfg.tables.all().items() if p.exists()}
    assert canary_hits(cfg.lakehouse) == [] and canary_hits(cfg.reports) == []
    assert not list((cfg.lakehouse / subject_rights.PENDING_ERASURES_DIR).iterdir())
    assert not any(c in certificate_path.read_text(encoding="utf-8").lower() for c in CANARIES)

    # A later request for the erased subject has nothing left to erase or check, and says so.
    with pytest.raises(IdresError, match="in the erasure register already"):
        subject_rights.run(spark, cfg, run_id="sr-again", action="erase", record=["ua_crm:UA-9"])


def test_a_file_vacuum_leaves_in_a_table_fails_the_purge_naming_it_and_the_retry_after_its_removal_finishes(
    tmp_path,
):
    from tests.conftest import config_in

    cfg = config_in(tmp_path)
    for value in (1, 2):
        write_deltalake(str(cfg.tables.silver), pa.table({"a": [value]}), mode="overwrite")
    leftover = cfg.tables.silver / "_temporary" / "0" / "part-0.parquet"  # another writer's, killed
    leftover.parent.mkdir(parents=True)
    pq.write_table(pa.table({"a": [3]}), leftover)
    certificate = {"run_id": "sr-x", "subject_reference": "ref"}

    relative = leftover.relative_to(cfg.lakehouse)
    with pytest.raises(IdresError, match=rf"1 file\(s\) of earlier versions left \({re.escape(str(relative))}\)"):
        subject_rights.purge_erased_history(cfg, certificate)
    leftover.unlink()
    assert set(subject_rights.purge_erased_history(cfg, certificate)["table_versions_after"]) == {"silver"}


def test_the_scan_finds_whole_values_only_and_as_json_escapes_them(tmp_path):
    street = 'ЖК "Сонячний" 5'
    pq.write_table(
        pa.table(
            {
                "email_valid": ["ivanova", "shevchenka 12"],  # longer values that contain the subject's
                "raw_record": [json.dumps({"street": street}, ensure_ascii=False), None],  # a quarantined raw row
                "tags": [["lin"], []],
            }
        ),
        tmp_path / "part-0.parquet",
    )
    (tmp_path / "incident.txt").write_text('File "jobs/unify.py", line 4, in run\n<link href="x">\n', encoding="utf-8")
    values = ["ivanov", "shevchenka 1", "ali", "lin", street]

    assert subject_rights.scan_for_values(tmp_path, values) == {"part-0.parquet": 2}  # the street and "lin"
    assert subject_rights.scan_for_values(tmp_path, ["unify.py"]) == {"incident.txt": 1}
    assert subject_rights.scan_for_values(tmp_path, ["ivanov", "shevchenka 1", "ali"]) == {}
    (tmp_path / "escaped.json").write_text(json.dumps(["Іванова", "Петро"]), encoding="ascii")  # \u0406\u0432...
    assert subject_rights.scan_for_values(tmp_path, ["Іван", "Петро"], [tmp_path / "escaped.json"]) == {
        "escaped.json": 1
    }
    # a lakehouse named through a symlink, whose tables' files delta-rs names by their canonical paths
    (tmp_path / "linked").symlink_to(tmp_path)
    assert subject_rights.scan_for_values(tmp_path / "linked", ["lin"], [tmp_path / "part-0.parquet"]) == {
        "part-0.parquet": 1
    }


def test_a_request_for_a_profile_id_that_was_merged_or_retired_says_so_and_changes_nothing(spark, pristine, tmp_path):
    """An id from an earlier export may have been merged into another person's profile since: the request names the
    successor for the requester to decide on, rather than "unknown profile id", and takes no one's records."""
    from jobs.profile_ids import REGISTRY_SCHEMA

    cfg = copy_lakehouse(pristine, tmp_path)
    iryna = profile_of(spark, cfg, "ua_crm:UA-9")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    ended = [
        ("pr_" + "a" * 20, "merged", at, "run-0", at, "run-1", iryna),
        ("pr_" + "b" * 20, "retired", at, "run-0", at, "run-1", None),
    ]
    # merged in as a later run does, which writes string_view Parquet beside the first run's string files
    delta_io.merge_delta(
        pa.Table.from_pylist([dict(zip(REGISTRY_SCHEMA.names, row, strict=True)) for row in ended], REGISTRY_SCHEMA),
        cfg.tables.profile_registry,
        keys=("profile_id",),
        run_id="run-1",
        job="resolve",
    )
    versions = {name: delta_io.table_version(path) for name, path in cfg.tables.all().items()}
    expected = {
        "a": f"profile pr_{'a' * 20} was merged into {iryna} by run run-1; name that profile",
        "b": f"profile pr_{'b' * 20} was retired by run run-1 (its records withdrawn or erased)",
        "c": f"profile pr_{'c' * 20} was never issued",
    }
    for letter, message in expected.items():
        with pytest.raises(IdresError, match=re.escape(message)):
            subject_rights.run(spark, cfg, run_id=f"sr-{letter}", action="erase", profile_id="pr_" + letter * 20)
    # copied with a CSV line's CR or a space: not "never issued", next to an id that looks the same
    for typed in (f"{iryna}\r", f" {iryna}", iryna.upper(), "Iryna"):
        with pytest.raises(IdresError, match=r"--profile-id is not a profile id: pr_ and 20 hexadecimal digits") as e:
            subject_rights.run(spark, cfg, run_id="sr-typed", action="export", profile_id=typed)
        assert "Iryna" not in str(e.value)
    assert {name: delta_io.table_version(path) for name, path in cfg.tables.all().items()} == versions


def test_a_record_no_table_holds_is_refused_and_nothing_is_erased(spark, pristine, tmp_path):
    cfg = copy_lakehouse(pristine, tmp_path)
    versions = {name: delta_io.table_version(path) for name, path in cfg.tables.all().items()}
    for ref in ("ua_crm:ua-9", "ua-crm:UA-9"):  # a case typo, a source typo
        with pytest.raises(IdresError, match="1 of the given record"):
            subject_rights.run(spark, cfg, run_id="sr-typo", action="erase", record=[ref, "ua_crm:UA-1"])
    assert {name: delta_io.table_version(path) for name, path in cfg.tables.all().items()} == versions
    assert not (cfg.reports / subject_rights.REQUESTS_DIR).exists()


def quarantine_one(spark, cfg, record: dict[str, str], reason: str, raw: str) -> None:
    """Make the quarantine table hold one row: record's (source and id) with reason and raw text."""
    quarantined = (
        bronze_rows(spark, [record])
        .withColumn(ingest.REASON, F.lit(reason))
        .withColumn(ingest.CORRUPT, F.lit(None).cast("string"))
        .withColumn(ingest.SOURCE_FILE, F.lit("ua.csv"))
        .transform(ingest.to_quarantine, F.lit(raw), "run-1", datetime(2026, 1, 1))
    )
    delta_io.overwrite_delta(quarantined, cfg.tables.quarantine, run_id="run-1", job="ingest")


def test_a_value_another_records_quarantined_csv_line_holds_is_not_the_subjects_to_scan_for(spark, pristine, tmp_path):
    """Her husband shares her street; his CSV line, one field too many, is quarantined as text that names no
    field. The street is his too, so the erasure neither demands it gone nor fails on his row."""
    cfg = copy_lakehouse(pristine, tmp_path)
    husband = {"source_system": "ua_crm", "source_record_id": "UA-78"}
    raw = f"UA-78;Мельник;Петро;;;;;;{CANARY_BRIDGE['street']};;;;;extra"
    quarantine_one(spark, cfg, husband, "wrong_field_count", raw)

    certificate_path = subject_rights.run(spark, cfg, run_id="sr-h", action="erase", record=["ua_crm:UA-9"])
    certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
    assert certificate["scan"]["hits"] == 0
    kept = delta_io.read_delta(spark, cfg.tables.quarantine).select("source_record_id", "raw_record")
    assert_df_equality(kept, spark.createDataFrame([("UA-78", raw)], kept.schema), ignore_nullable=True)
    assert [h for h in canary_hits(cfg.lakehouse) if "quarantine" not in h] == []


def test_a_value_held_as_a_word_of_another_records_value_is_not_the_subjects_to_scan_for(spark, pristine, tmp_path):
    """Her rare middle name is also the name of a neighbour's street: the neighbour's row keeps it, so the erasure
    does not demand it gone (which failed every attempt), and finishes."""
    cfg = copy_lakehouse(pristine, tmp_path)
    neighbour = {"source_system": "ro_shop", "source_record_id": "R-77", "first_name": "Ana", "last_name": "Pop"}
    neighbour["street"] = f"Strada {CANARY_BRIDGE['middle_name']} 7"
    keys = ("source_system", "source_record_id")
    delta_io.merge_delta(bronze_rows(spark, [neighbour]), cfg.tables.bronze, keys=keys, run_id="run-2", job="test")
    delta_io.merge_delta(silver_rows(spark, cfg, [neighbour]), cfg.tables.silver, keys=keys, run_id="run-2", job="t")

    certificate_path = subject_rights.run(spark, cfg, run_id="sr-w", action="erase", record=["ua_crm:UA-9"])

    certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
    assert certificate["scan"]["hits"] == 0 and certificate["rows_deleted"]["bronze"] == 1
    kept = delta_io.read_delta(spark, cfg.tables.bronze).where(F.col("street").contains("Zzyzxqa"))
    assert [(r["source_record_id"], r["street"]) for r in kept.collect()] == [("R-77", "Strada Zzyzxqa 7")]


def test_a_quarantined_line_without_an_id_that_quotes_the_subjects_values_goes_with_its_erasure(
    spark, pristine, tmp_path
):
    """An extract once gave her row a blank id: quarantined as missing_source_id, the line named no record, so it
    counted as another's, took her values out of the evidence and stayed, under a certificate of a clean scan."""
    cfg = copy_lakehouse(pristine, tmp_path)
    raw = f";Мельник;Ірина;{CANARY_BRIDGE['middle_name']};;;;;{CANARY_BRIDGE['street']};;;;;"
    quarantine_one(spark, cfg, {"source_system": "ua_crm", "source_record_id": None}, "missing_source_id", raw)
    # Her access export lists the line too, as held, without its text: nothing names whose values it holds.
    export_path = subject_rights.run(spark, cfg, run_id="sr-n0", action="export", record=["ua_crm:UA-9"])
    listed = json.loads(export_path.read_text(encoding="utf-8"))["source_records_quarantined"]
    raw_hash = delta_io.read_delta(spark, cfg.tables.quarantine).first()["raw_hash"]
    assert [(r["reason"], r["raw_hash"], r["raw_record"], r["raw_record_withheld"]) for r in listed] == [
        ("missing_source_id", raw_hash, None, True)
    ]

    certificate_path = subject_rights.run(spark, cfg, run_id="sr-n", action="erase", record=["ua_crm:UA-9"])
    certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
    assert certificate["rows_deleted"]["quarantine"] == 1 and certificate["export_files_removed"] == 1
    assert certificate["scan"]["values_checked"] >= len(CANARIES) and certificate["scan"]["hits"] == 0
    assert delta_io.read_delta(spark, cfg.tables.quarantine).count() == 0
    assert canary_hits(cfg.lakehouse) == []


def test_a_truncated_line_that_names_another_record_keeps_its_values_and_stays(spark, pristine, tmp_path):
    """A JSONL line cut short lands under no id, yet its text names its record: that record's, not the subject's."""
    cfg = copy_lakehouse(pristine, tmp_path)
    raw = f'{{"id_client": "R-77", "strada": "{CANARY_BRIDGE["street"]}"'
    quarantine_one(spark, cfg, {"source_system": "ro_shop", "source_record_id": None}, "malformed_record", raw)

    certificate_path = subject_rights.run(spark, cfg, run_id="sr-t", action="erase", record=["ua_crm:UA-9"])
    certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
    assert certificate["scan"]["hits"] == 0 and certificate["rows_deleted"]["quarantine"] == 0
    kept = delta_io.read_delta(spark, cfg.tables.quarantine).select("source_record_id", "raw_record")
    assert_df_equality(kept, spark.createDataFrame([(None, raw)], kept.schema), ignore_nullable=True)


QUARANTINED_ONLY = {"source_system": "ua_crm", "source_record_id": "UA-77", "middle_name": "Xqxquar"}


def test_a_subject_held_only_in_quarantine_is_exported_then_erased_with_its_export(spark, pristine, tmp_path):
    cfg = copy_lakehouse(pristine, tmp_path)
    raw = json.dumps({**QUARANTINED_ONLY, "email": "xqxquar@example.org", "date_of_birth": "31.02.1990"})
    quarantine_one(spark, cfg, QUARANTINED_ONLY, "unparseable_date", raw)

    def holding(root: Path) -> list[str]:
        return [
            str(f.relative_to(root))
            for f in root.rglob("*")
            if f.is_file() and "xqxquar" in f.read_bytes().decode(errors="replace").lower()
        ]

    export_path = subject_rights.run(spark, cfg, run_id="sr-q1", action="export", record=["ua_crm:UA-77"])
    export = json.loads(export_path.read_text(encoding="utf-8"))
    assert [json.loads(r["raw_record"])["email"] for r in export["source_records_quarantined"]] == [
        "xqxquar@example.org"
    ]

    certificate_path = subject_rights.run(spark, cfg, run_id="sr-q2", action="erase", record=["ua_crm:UA-77"])
    certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
    assert not export_path.exists() and certificate["export_files_removed"] == 1
    assert certificate["rows_deleted"]["quarantine"] == 1 and certificate["scan"]["values_checked"] >= 2
    assert delta_io.read_delta(spark, cfg.tables.quarantine).count() == 0
    assert holding(cfg.reports) == [] and holding(cfg.lakehouse) == []


def test_a_by_record_export_withholds_what_identity_events_say_of_a_profile_with_other_records():
    """Identity events count and name the records and profiles of all of a profile's members."""
    profile = {"profile_id": "pr_a", "record_count": 2, "last_updated_at": None}
    sections = {
        "profiles": [profile, {"profile_id": "pr_b", "record_count": 1, "last_updated_at": None}],
        "profile_values_lineage": [],
        "profile_permissions": [],
        "profile_sources": [
            {"profile_id": p, "record_id": r, "region": "UA", "source_system": "s", "best_match_record_id": None}
            for p, r in (("pr_a", "s:1"), ("pr_a", "s:2"), ("pr_b", "s:3"))
        ],
        "identity_events": [
            {"event_type": "moved", "profile_id": "pr_a", "related_profile_id": "pr_c", "records": 1},
            {"event_type": "split", "profile_id": "pr_b", "related_profile_id": "pr_c", "records": 1},
        ],
    }
    events = subject_rights.own_profile_rows(sections, {"s:1", "s:3"}, [])["identity_events"]
    assert events == [
        {"event_type": "moved", "profile_id": "pr_a", "related_profile_id": None, "records": None},
        {"event_type": "split", "profile_id": "pr_b", "related_profile_id": "pr_c", "records": 1},  # all hers
    ]


def test_the_export_of_a_subject_held_only_in_a_quarantined_csv_line_goes_with_its_erasure(spark, pristine, tmp_path):
    """A CSV line names no field, so its values are not known to scan for: the export is found by its records."""
    cfg = copy_lakehouse(pristine, tmp_path)
    subject = {"source_system": "ua_crm", "source_record_id": "UA-76"}
    quarantine_one(spark, cfg, subject, "wrong_field_count", "UA-76;Xqxcsv;Олена;;;;;;Xqxstreet 1;;;;;extra")
    export_path = subject_rights.run(spark, cfg, run_id="sr-c1", action="export", record=["ua_crm:UA-76"])
    other_path = subject_rights.run(spark, cfg, run_id="sr-c2", action="export", record=["ua_crm:UA-1"])
    cut_short = other_path.with_name("export-cut-short.json")  # a write killed halfway: no JSON to read ids from
    cut_short.write_text('{"source_record_ids": ["ua_crm:UA-1"', encoding="utf-8")

    certificate_path = subject_rights.run(spark, cfg, run_id="sr-c3", action="erase", record=["ua_crm:UA-76"])

    certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
    assert (certificate["export_files_removed"], certificate["rows_deleted"]["quarantine"]) == (1, 1)
    assert not export_path.exists() and other_path.exists() and cut_short.exists()
    assert "xqxcsv" not in "".join(f.read_text(encoding="utf-8").lower() for f in cfg.reports.rglob("*.json"))


def test_an_export_withholds_the_text_of_a_quarantined_line_that_holds_another_persons_record_too(
    spark, pristine, tmp_path
):
    """An exporter joined two people's records on one line: the line is quarantined under the first record's id, so
    that person's export shows it is held, with its reason, but not its text, which holds the other's values."""
    cfg = copy_lakehouse(pristine, tmp_path)
    first = {"source_system": "ro_shop", "source_record_id": "RO-77"}

    def exported(raw: str) -> dict:
        quarantine_one(spark, cfg, first, "malformed_record", raw)
        path = subject_rights.run(spark, cfg, run_id=f"sr-{len(raw)}", action="export", record=["ro_shop:RO-77"])
        text = path.read_text(encoding="utf-8")
        assert "Xqxsecond" not in text
        return json.loads(text)

    joined = '{"id_client": "RO-77", "nume": "Xqxfirst"}{"id_client": "RO-78", "nume": "Xqxsecond"}'
    (row,) = exported(joined)["source_records_quarantined"]
    assert (row["reason"], row["raw_record"], row["raw_record_withheld"]) == ("malformed_record", None, True)

    own = '{"id_client": "RO-77", "nume": "Xqxfirst"} trailing text'  # malformed, but only this person's
    (row,) = exported(own)["source_records_quarantined"]
    assert (row["raw_record"], row["raw_record_withheld"]) == (own, False)


def test_the_second_record_of_a_joined_line_finds_it_and_its_erasure_outlasts_a_rerun_of_the_extract(
    spark, pristine, tmp_path
):
    """The line is held under its first record's id, yet it holds the second person's values too: their access
    request lists it (text withheld), their erasure deletes it, and ingesting the extract again keeps the line
    without content, under the erased record's hash (and so a line of theirs held under no id)."""
    cfg = copy_lakehouse(pristine, tmp_path)
    source = dataclasses.replace(cfg.source("ro_shop"), path=tmp_path / "customers.jsonl")

    def record(record_id: str, last_name: str) -> str:
        fields = dict.fromkeys(source.columns.values(), "x") | {"id_client": record_id, "nume": last_name}
        fields |= {"data_nasterii": "1990-01-01", "actualizat_la": "2024-01-01T00:00:00+02:00"}
        return json.dumps(fields)

    joined = record("RO-77", "Xqxfirst") + record("RO-78", "Xqxsecond")
    quarantine_one(spark, cfg, {"source_system": "ro_shop", "source_record_id": "RO-77"}, "malformed_record", joined)

    export_path = subject_rights.run(spark, cfg, run_id="sr-j1", action="export", record=["ro_shop:RO-78"])
    (row,) = json.loads(export_path.read_text(encoding="utf-8"))["source_records_quarantined"]
    assert (row["source_record_id"], row["raw_record"], row["raw_record_withheld"]) == ("RO-77", None, True)

    certificate_path = subject_rights.run(spark, cfg, run_id="sr-j2", action="erase", record=["ro_shop:RO-78"])
    certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
    assert certificate["rows_deleted"]["quarantine"] == 1
    assert certificate["re_resolution"] == "published: the gold suites passed it"
    assert delta_io.read_delta(spark, cfg.tables.quarantine).count() == 0

    unread = record("RO-78", "Xqxsecond")[:-1] + ', "nota": NaN}'  # no JSON: quarantined under no id
    source.path.write_text("\n".join([record("RO-1", "Pop"), joined, unread]) + "\n", encoding="utf-8")
    assert ingest.run(spark, dataclasses.replace(cfg, sources=(source,)), run_id="rerun").reconciled
    kept = (
        delta_io.read_delta(spark, cfg.tables.quarantine)
        .where(F.col("run_id") == "rerun")
        .select("source_system", "source_record_id", "reason", "raw_record", "raw_hash")
    )
    erased_hash = hashlib.sha256(b"idres-subject:ro_shop:RO-78").hexdigest()
    expected = spark.createDataFrame([("ro_shop", None, ingest.ERASED_SUBJECT, None, erased_hash)], kept.schema)
    assert_df_equality(kept, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_stray_file_holding_the_subjects_values_is_named_and_the_retry_after_its_removal_finishes(
    spark, pristine, tmp_path
):
    cfg = copy_lakehouse(pristine, tmp_path)
    iryna = profile_of(spark, cfg, "ua_crm:UA-9")
    stray = cfg.lakehouse / "gold" / "_spill_profiles" / "part-0.parquet"  # a killed write's output, in no table
    stray.parent.mkdir(parents=True)
    pq.write_table(pa.table({"middle_name": [CANARY_BRIDGE["middle_name"]]}), stray)

    with pytest.raises(IdresError, match=rf"1 file\(s\) still hold values .*\({re.escape(str(stray))}\)"):
        subject_rights.run(spark, cfg, run_id="sr-stray", action="erase", profile_id=iryna)
    stray.unlink()
    certificate_path = subject_rights.run(spark, cfg, run_id="sr-stray", action="erase", profile_id=iryna)
    certificate = json.loads(certificate_path.read_text(encoding="utf-8"))
    assert certificate["source_records_erased"] == len(IRYNA_IDS) and certificate["scan"]["hits"] == 0
    assert canary_hits(cfg.lakehouse) == [] and canary_hits(cfg.reports) == []


def test_an_export_by_record_holds_of_its_profile_only_what_the_named_record_supplied(spark, pristine, tmp_path):
    cfg = copy_lakehouse(pristine, tmp_path)
    assert profile_of(spark, cfg, "ro_shop:R-1") == profile_of(spark, cfg, "ua_crm:UA-9")  # the bridge joined them

    export_path = subject_rights.run(spark, cfg, run_id="sr-r1", action="export", record=["ro_shop:R-1"])

    export = json.loads(export_path.read_text(encoding="utf-8"))
    assert {r["record_id"] for r in export["profile_sources"]} == {"ro_shop:R-1"}
    lineage_columns = {r["column"] for r in export["profile_values_lineage"]}
    assert lineage_columns and {r["record_id"] for r in export["profile_values_lineage"]} == {"ro_shop:R-1"}
    (profile,) = export["profiles"]
    assert {c for c in cfg.survivorship.columns if profile[c] is not None} == lineage_columns
    # its own share of the profile's provenance; the latest update may be another record's
    assert (profile["regions"], profile["source_systems"], profile["record_count"]) == (["RO"], ["ro_shop"], 1)
    assert profile["region_count"] == 1 and profile["last_updated_at"] is None
    decisions = [
        (p["deciding_source_record_id"], p["status"], p["lawful_basis"]) for p in export["profile_permissions"]
    ]
    assert decisions and all(
        r == "R-1" or (r is None and basis is None and status in (None, unify.NONE_RECORDED))
        for r, status, basis in decisions
    )
    # Its identity events count all the profile's records: their counts and related profiles are withheld.
    assert [(e["event_type"], e["records"], e["related_profile_id"]) for e in export["identity_events"]] == [
        ("created", None, None)
    ]
    # The profile's other records (the bridge's canary values and ids among them) are not the named subject's.
    text = export_path.read_text(encoding="utf-8")
    assert canary_hits(cfg.reports) == [] and "UA-9" not in text and "LM-9" not in text


def test_profiles_a_record_held_before_are_exported_and_those_it_held_alone_are_erased(spark, pristine, tmp_path):
    """A record's profile of an earlier run, merged since into today's, is still in the registry and the identity
    events under an id the record and run ids give: the export lists it, and the erasure deletes its rows unless
    another record held it too (then its history is that record's person's as well)."""
    from jobs.profile_ids import IDENTITY_EVENTS_SCHEMA, REGISTRY_SCHEMA

    cfg = copy_lakehouse(pristine, tmp_path)
    t = cfg.tables
    iryna = profile_of(spark, cfg, "ua_crm:UA-9")
    alone, shared = "pr_" + "a" * 20, "pr_" + "b" * 20
    current = delta_io.read_delta(spark, t.record_profiles).toPandas()

    def assign(profiles: dict[str, str], run_id: str) -> None:
        rows = current[current["record_id"].isin(list(profiles))].assign(
            profile_id=lambda df: df["record_id"].map(profiles)
        )
        delta_io.merge_delta(
            pa.Table.from_pandas(rows, preserve_index=False),
            t.record_profiles,
            keys=("record_id",),
            update_changed=True,
            run_id=run_id,
            job="resolve",
        )

    # UA-9 alone under `alone`, then with R-1 (not named by the request) under `shared`, then as today
    assign({"ua_crm:UA-9": alone}, "run-a")
    assign({"ua_crm:UA-9": shared, "ro_shop:R-1": shared}, "run-b")
    assign({"ua_crm:UA-9": iryna, "ro_shop:R-1": iryna}, "run-c")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    registry = [
        (alone, "merged", at, "run-a", at, "run-b", shared),
        (shared, "merged", at, "run-b", at, "run-c", iryna),
    ]
    delta_io.merge_delta(
        pa.Table.from_pylist([dict(zip(REGISTRY_SCHEMA.names, r, strict=True)) for r in registry], REGISTRY_SCHEMA),
        t.profile_registry,
        keys=("profile_id",),
        run_id="run-c",
        job="resolve",
    )
    events = [
        ("run-a", "created", alone, None, 1, at, "e-a"),
        ("run-b", "merged", alone, shared, 1, at, "e-ab"),
        ("run-b", "created", shared, None, 2, at, "e-b"),
        ("run-c", "merged", shared, iryna, 2, at, "e-bc"),
    ]
    delta_io.merge_delta(
        pa.Table.from_pylist(
            [dict(zip(IDENTITY_EVENTS_SCHEMA.names, e, strict=True)) for e in events], IDENTITY_EVENTS_SCHEMA
        ),
        t.identity_events,
        keys=("event_id",),
        run_id="run-c",
        job="resolve",
    )

    exported = json.loads(
        subject_rights.run(spark, cfg, run_id="sr-x", action="export", record=["ua_crm:UA-9"]).read_text("utf-8")
    )
    assert (exported["profile_ids"], exported["former_profile_ids"]) == ([iryna], sorted([alone, shared]))
    former_events = {
        e["event_id"]: (e["related_profile_id"], e["records"])
        for e in exported["identity_events"]
        if e["profile_id"] in (alone, shared)
    }
    # whole for the profile of UA-9 alone; of the one it shared with R-1, what another record's person made withheld
    assert former_events == {"e-a": (None, 1), "e-ab": (shared, 1), "e-b": (None, None), "e-bc": (None, None)}

    certificate = json.loads(
        subject_rights.run(spark, cfg, run_id="sr-e", action="erase", record=["ua_crm:UA-9"]).read_text("utf-8")
    )
    assert certificate["former_profile_ids"] == sorted([alone, shared])
    kept_registry = {r["profile_id"] for r in delta_io.read_delta(spark, t.profile_registry).collect()}
    kept_events = {r["event_id"] for r in delta_io.read_delta(spark, t.identity_events).collect()}
    assert alone not in kept_registry and {shared, iryna} <= kept_registry
    assert not {"e-a", "e-ab"} & kept_events and {"e-b", "e-bc"} <= kept_events


def test_a_query_before_any_run_says_the_lakehouse_holds_no_table(tmp_path, monkeypatch, capsys):
    """DuckDB answered `Table with name profiles does not exist! Did you mean "pg_views"?`."""
    monkeypatch.setenv("IDRES_LAKEHOUSE", str(tmp_path / "lakehouse"))
    with pytest.raises(SystemExit) as exited:
        query.main(["SELECT count(*) FROM profiles"])
    assert exited.value.code == 2
    assert (
        capsys.readouterr().err == f"query: the lakehouse {tmp_path / 'lakehouse'} holds no table yet; make run first\n"
    )


def test_a_profile_made_for_one_record_is_found_after_a_purge_took_the_history_that_held_it(spark, pristine, tmp_path):
    """Every erasure purges the tables' history, where a subject's former profiles are found: one created for a
    record alone, and given no records since, is still told by its id (run and record) and its identity events."""
    from jobs.profile_ids import IDENTITY_EVENTS_SCHEMA, REGISTRY_SCHEMA, first_profile_id

    cfg = copy_lakehouse(pristine, tmp_path)
    t = cfg.tables
    iryna = profile_of(spark, cfg, "ua_crm:UA-9")
    alone, fed, bigger = (first_profile_id(run, "ua_crm:UA-9") for run in ("run-a", "run-b", "run-c"))
    at = datetime(2026, 1, 1, tzinfo=UTC)
    registry = [
        (p, "merged", at, run, at, "run-1", iryna) for p, run in ((alone, "run-a"), (fed, "run-b"), (bigger, "run-c"))
    ]
    events = [
        ("run-a", "created", alone, None, 1, at, "e-a"),
        ("run-b", "created", fed, None, 1, at, "e-b"),
        ("run-b2", "moved", fed, "pr_" + "d" * 20, 1, at, "e-b2"),  # another record moved into it
        ("run-c", "created", bigger, None, 2, at, "e-c"),  # made with another record
        *[("run-1", "merged", p, iryna, 1, at, f"e-m{i}") for i, p in enumerate((alone, fed, bigger))],
    ]
    for table, rows, schema, key in (
        (t.profile_registry, registry, REGISTRY_SCHEMA, "profile_id"),
        (t.identity_events, events, IDENTITY_EVENTS_SCHEMA, "event_id"),
    ):
        delta_io.merge_delta(
            pa.Table.from_pylist([dict(zip(schema.names, r, strict=True)) for r in rows], schema),
            table,
            keys=(key,),
            run_id="run-1",
            job="resolve",
        )

    exported = json.loads(
        subject_rights.run(spark, cfg, run_id="sr-x", action="export", record=["ua_crm:UA-9"]).read_text("utf-8")
    )
    assert exported["former_profile_ids"] == [alone]
    certificate = json.loads(
        subject_rights.run(spark, cfg, run_id="sr-e", action="erase", record=["ua_crm:UA-9"]).read_text("utf-8")
    )
    assert certificate["former_profile_ids"] == [alone]
    kept = {r["profile_id"] for r in delta_io.read_delta(spark, t.profile_registry).collect()}
    kept_events = {r["event_id"] for r in delta_io.read_delta(spark, t.identity_events).collect()}
    assert alone not in kept and {fed, bigger} <= kept
    assert not {"e-a", "e-m0"} & kept_events and {"e-b", "e-b2", "e-c", "e-m1", "e-m2"} <= kept_events
