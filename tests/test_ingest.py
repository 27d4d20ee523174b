from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import canonical, delta_io, ingest
from jobs.config import PipelineConfig, SourceConfig, load_config
from jobs.errors import ConfigError, SourceSchemaError
from tests.conftest import edited_conf, run_or_cancel

CSV_HEADER = ";".join(
    [
        "kod_kliienta",
        "prizvyshche",
        "imia",
        "po_batkovi",
        "data_narodzhennia",
        "stat",
        "telefon",
        "email",
        "adresa",
        "misto",
        "indeks",
        "ipn",
        "onovleno",
    ]
)


@pytest.fixture
def tiny_ua_source(cfg: PipelineConfig, tmp_path: Path):
    path = tmp_path / "ua.csv"
    path.write_text(
        "\n".join(
            [
                CSV_HEADER,
                "UA-1;Шевченко;Олександр;Петрович;24.08.1991;ч;067 123 45 67;;вул. Хрещатик, 1;Київ;01001;1234567890;"
                "01.03.2025 10:15",
                "UA-2; Коваль ;Ірина;;31.02.1990;ж;;iryna@ukr.net;;;;;01.03.2025 10:16",
                ";Бондар;Анна;;01.01.1980;ж;;;;;;;01.03.2025 10:17",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return dataclasses.replace(cfg.source("ua_crm"), path=path)


def validated_rows(spark: SparkSession, source: SourceConfig) -> DataFrame:
    """source's extract read, mapped and given its quarantine reasons."""
    return (
        ingest.read_source(spark, source)
        .transform(ingest.map_to_canonical, source)
        .transform(ingest.assign_quarantine_reasons, source)
    )


def test_ingest_maps_source_columns_to_the_canonical_schema(spark, tiny_ua_source):
    mapped = ingest.read_source(spark, tiny_ua_source).transform(ingest.map_to_canonical, tiny_ua_source)
    actual = mapped.select(
        "source_system",
        "region",
        "source_record_id",
        "last_name",
        "first_name",
        "middle_name",
        "date_of_birth",
        "phone",
        "email",
        "city",
        "national_id",
        "country",
        "updated_at",
    )
    expected = spark.createDataFrame(
        [
            (
                "ua_crm",
                "UA",
                "UA-1",
                "Шевченко",
                "Олександр",
                "Петрович",
                "24.08.1991",
                "067 123 45 67",
                None,
                "Київ",
                "1234567890",
                None,
                "01.03.2025 10:15",
            ),
            (
                "ua_crm",
                "UA",
                "UA-2",
                "Коваль",
                "Ірина",
                None,
                "31.02.1990",
                None,
                "iryna@ukr.net",
                None,
                None,
                None,
                "01.03.2025 10:16",
            ),
            (
                "ua_crm",
                "UA",
                None,
                "Бондар",
                "Анна",
                None,
                "01.01.1980",
                None,
                None,
                None,
                None,
                None,
                "01.03.2025 10:17",
            ),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_date_of_birth_before_1900_or_after_the_run_day_is_quarantined_as_implausible(spark, cfg, tmp_path):
    tomorrow = (dt.date.today() + dt.timedelta(days=1)).strftime("%d.%m.%Y")
    births = {"UA-1": "31.12.1899", "UA-2": "01.01.1900", "UA-3": "01.01.0001", "UA-4": tomorrow}
    path = tmp_path / "ua.csv"
    rows = [f"{key};Бондар;Анна;;{born};ж;;;;;;;01.03.2025 10:17" for key, born in births.items()]
    path.write_text("\n".join([CSV_HEADER, *rows]) + "\n", encoding="utf-8")
    source = dataclasses.replace(cfg.source("ua_crm"), path=path)
    actual = validated_rows(spark, source).select("source_record_id", ingest.REASON)
    expected = spark.createDataFrame(
        [("UA-1", "implausible_date"), ("UA-2", None), ("UA-3", "implausible_date"), ("UA-4", "implausible_date")],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_typed_columns_are_parsed_with_the_source_format_and_bad_rows_get_a_reason(spark, tiny_ua_source):
    validated = validated_rows(spark, tiny_ua_source)
    actual = validated.select("source_record_id", "date_of_birth", "updated_at", ingest.REASON)
    expected = spark.createDataFrame(  # update times in UTC: Kyiv's 10:15 on 1 March 2025 is 08:15 UTC
        [
            ("UA-1", dt.date(1991, 8, 24), dt.datetime(2025, 3, 1, 8, 15), None),
            ("UA-2", None, dt.datetime(2025, 3, 1, 8, 16), "unparseable_date"),
            (None, dt.date(1980, 1, 1), dt.datetime(2025, 3, 1, 8, 17), "missing_source_id"),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_values_lose_unicode_spaces_and_control_characters_at_both_ends(spark, cfg, tmp_path):
    records = [
        {"id_client": "\t", "nume": "Pop", "data_nasterii": "1990-02-01"},
        {"id_client": "\u00a0\u3000", "nume": "Ion", "data_nasterii": "1990-02-01"},  # no-break, ideographic space
        {"id_client": "R3", "nume": "Pop\u200b", "data_nasterii": "1990-02-01\t"},  # zero-width space, tab
        {"id_client": "R4\r", "nume": "Pop", "data_nasterii": "1990-02-01"},
        {"id_client": "R4", "nume": "Ion", "data_nasterii": "1990-02-01"},
        {"id_client": "\u2007R5\n", "nume": "Dan", "data_nasterii": "\u00a01990-02-01\u00a0"},
    ]
    path = tmp_path / "customers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    source = dataclasses.replace(cfg.source("ro_shop"), path=path)
    actual = validated_rows(spark, source).select("source_record_id", "last_name", "date_of_birth", ingest.REASON)
    born = dt.date(1990, 2, 1)
    expected = spark.createDataFrame(
        [
            (None, "Pop", born, "missing_source_id"),
            (None, "Ion", born, "missing_source_id"),
            ("R3", "Pop", born, None),
            ("R4", "Pop", born, "duplicate_source_id"),
            ("R4", "Ion", born, "duplicate_source_id"),
            ("R5", "Dan", born, None),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_trimming_a_value_with_a_long_inner_run_of_spaces_keeps_the_run_and_does_not_hang(spark):
    inner = " \u00a0\t" * 100_000  # about 50 s to trim when every inner character began a trailing-run attempt
    values = [f"\u200bPop{inner}escu\r\n", f"Pop{inner}", f"{inner}escu", inner, "\u3000Ion Pop "]
    df = spark.createDataFrame([(v,) for v in values], "value string")
    cells = run_or_cancel(spark, lambda: df.select(canonical.trimmed("value").alias("value")).collect(), seconds=30)
    assert [r["value"] for r in cells] == [f"Pop{inner}escu", "Pop", "escu", "", "Ion Pop"]


def test_timestamps_without_an_offset_are_read_in_the_source_time_zone_and_land_in_utc(spark, cfg, tmp_path):
    path = tmp_path / "ua.csv"
    updates = {  # Kyiv: UTC+2 in winter, UTC+3 in summer (from 30 March 2025, 03:00)
        "UA-1": "15.01.2025 10:15",
        "UA-2": "15.07.2025 10:15",
        "UA-3": "30.03.2025 04:00",
        "UA-4": "01.01.2025 00:30",  # the day before in UTC
    }
    rows = [f"{key};Бондар;Анна;;01.01.1980;ж;;;;;;;{at}" for key, at in updates.items()]
    path.write_text("\n".join([CSV_HEADER, *rows]) + "\n", encoding="utf-8")
    ua = dataclasses.replace(cfg.source("ua_crm"), path=path)
    actual = validated_rows(spark, ua).select("source_record_id", "updated_at", ingest.REASON)
    expected = spark.createDataFrame(
        [
            ("UA-1", dt.datetime(2025, 1, 15, 8, 15), None),
            ("UA-2", dt.datetime(2025, 7, 15, 7, 15), None),
            ("UA-3", dt.datetime(2025, 3, 30, 1, 0), None),
            ("UA-4", dt.datetime(2024, 12, 31, 22, 30), None),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_repeated_source_id_quarantines_every_copy(spark, cfg, tmp_path):
    path = tmp_path / "dup.csv"
    rows = ["UA-7;A;B;;;;;;;;;;", "UA-7;C;D;;;;;;;;;;", "UA-8;E;F;;;;;;;;;;", "UA-9;G;H;;;;;;;;;;"]
    rows.append("UA-9;I;J;;31.02.1990;;;;;;;;")  # a bad copy does not make the good one trusted
    path.write_text(CSV_HEADER + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    source = dataclasses.replace(cfg.source("ua_crm"), path=path)
    validated = validated_rows(spark, source)
    actual = validated.select("source_record_id", "last_name", ingest.REASON)
    expected = spark.createDataFrame(
        [
            ("UA-7", "A", "duplicate_source_id"),
            ("UA-7", "C", "duplicate_source_id"),
            ("UA-8", "E", None),
            ("UA-9", "G", "duplicate_source_id"),
            ("UA-9", "I", "unparseable_date"),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def ua_row(record_id: str, street: str, extra: str = "") -> str:
    return f"{record_id};Шевченко;Олександр;;24.08.1991;ч;;;{street};Київ;;;01.03.2025 10:15{extra}"


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"], ids=["crlf-then-lf", "lf", "cr"])
def test_quoted_line_breaks_stay_in_their_record_whatever_the_line_endings(spark, cfg, tmp_path, newline):
    lines = [
        CSV_HEADER,
        ua_row("UA-1", '"вул. Хрещатик, 1\r\nкв. 5"'),
        ua_row("UA-2", '"під\'їзд 2\nповерх 3"'),
        ua_row("UA-3", "вул. Бандери 7", ";unexpected"),
        ua_row("UA-4", '"Ocean ""Drive"""'),
    ]
    last_ending = "\n" if newline == "\r\n" else newline  # an extract with CRLF and LF mixed
    path = tmp_path / "breaks.csv"
    path.write_bytes((newline.join(lines) + last_ending).encode("utf-8"))
    source = dataclasses.replace(cfg.source("ua_crm"), path=path)
    validated = validated_rows(spark, source)
    actual = validated.select("source_record_id", "street", "updated_at", ingest.REASON)
    at = dt.datetime(2025, 3, 1, 8, 15)  # 10:15 in Kyiv
    expected = spark.createDataFrame(
        [
            ("UA-1", "вул. Хрещатик, 1\r\nкв. 5", at, None),
            ("UA-2", "під'їзд 2\nповерх 3", at, None),
            ("UA-3", "вул. Бандери 7", at, "wrong_field_count"),
            ("UA-4", 'Ocean "Drive"', at, None),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_csv_record_with_more_fields_than_the_parser_default_is_quarantined_and_the_others_land(spark, cfg, tmp_path):
    lines = [
        CSV_HEADER,
        ua_row("UA-1", "вул. Хрещатик, 1"),
        ua_row("UA-2", "вул. Франка 3", ";" * 25_000),  # 25,013 fields on one line
        "UA-3" + ";" * 12_000 + '"вул. Бандери 7\nкв. 5"' + ";" * 12_000,  # 24,001 fields on two lines
        ua_row("UA-4", "вул. Шевченка 2"),
        'UA-5;O"Brien;Ірина;;24.08.1991;ж;;;вул 2;Київ;;;01.03.2025 10:15',  # a quote inside a field is a letter,
        "UA-6" + ";" * 15_000 + '"вул. Бандери 7',  # so this quote opens a field over two lines: 30,001 fields
        'кв. 5"' + ";" * 15_000,
    ]
    path = tmp_path / "wide.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = dataclasses.replace(cfg.source("ua_crm"), path=path)
    actual = validated_rows(spark, source).select("source_record_id", ingest.REASON)
    expected = spark.createDataFrame(
        [
            ("UA-1", None),
            ("UA-2", "wrong_field_count"),
            ("UA-3", "wrong_field_count"),
            ("UA-4", None),
            ("UA-5", None),
            ("UA-6", "wrong_field_count"),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_jsonl_line_holding_anything_but_one_json_object_is_quarantined_whole(spark, cfg, tmp_path):
    lines = [
        '{"id_client": "R0", "nume": "Pop"}',
        '{"id_client": "R1", "nume": "Pop"}{"id_client": "R2", "nume": "Ion"}',
        '{"id_client": "R3", "nume": "Pop"} garbage',
        '{"id_client": "R4", "nume": "Pop"},',
        '{"id_client": "R5", "nume": "Pop"}]',  # the last line of a pretty-printed array
        '{"id_client": "R6", "nume": "Pop"}}',
        '{"id_client": "R7", "nume": "Pop"}, {"id_client": "R8", "nume": "Ion"}',
        "{'id_client': 'R9', 'nume': 'Pop'}",  # a Python dict's repr, not JSON
        '{"id_client": "R10", "nume": "Pop", "nume": "Ion"}',  # a key twice: a reader would keep one value
        '{"id_client": "R11", "nume": "Pop", "num\\u0065": "Ion"}',  # the same key, escaped
        '{"id_client": "R12", "nume": "Pop", "adresa": {"x": 1, "x": 2}}',  # in a nested object: not a field read
    ]
    path = tmp_path / "customers.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = dataclasses.replace(cfg.source("ro_shop"), path=path)
    actual = validated_rows(spark, source).select("source_record_id", "last_name", ingest.REASON)
    # Nothing of a malformed line lands, but its record id, as far as a lenient reader finds it (the first object's).
    malformed = [(f"R{n}", None, "malformed_record") for n in (1, 3, 4, 5, 6, 7, 9, 10, 11)]
    expected = spark.createDataFrame([("R0", "Pop", None), ("R12", "Pop", None), *malformed], actual.schema)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_jsonl_escape_of_half_a_surrogate_pair_quarantines_its_line_as_bad_encoding(spark, cfg, tmp_path):
    lines = [
        r'{"id_client": "R1", "nume": "Pop\ud83d"}',  # a high half alone: Spark landed "Pop?"
        r'{"id_client": "R2", "nume": "Pop\ud83d\ude00"}',  # a pair: one emoji
        r'{"id_client": "R3", "nume": "Pop\\ud83d"}',  # an escaped backslash, then plain text
        r'{"id_client": "R4", "nume": "Pop\\\ud83d"}',  # an escaped backslash, then a high half alone
        r'{"id_client": "R5", "n\udc00ume": "Pop"}',  # a low half alone, in a key
        r'{"id_client": "R6", "nume": "Pop\\ud83d\ude00"}',  # plain text, then a low half alone
        r'{"id_client": "R7", "nume": "\uD83D\uDE00 Pop"}',  # a pair, in upper case
    ]
    path = tmp_path / "customers.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = dataclasses.replace(cfg.source("ro_shop"), path=path)
    actual = validated_rows(spark, source).select("source_record_id", "last_name", ingest.REASON)
    expected = spark.createDataFrame(
        [
            ("R1", None, "bad_encoding"),
            ("R2", "Pop\U0001f600", None),
            ("R3", "Pop\\ud83d", None),
            ("R4", None, "bad_encoding"),
            ("R5", None, "bad_encoding"),
            ("R6", None, "bad_encoding"),
            ("R7", "\U0001f600 Pop", None),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_named_record_ids_are_the_values_a_line_gives_the_id_key(spark):
    """A line that gives the id key several values joins several records (an exporter's error); a value that
    only contains the key's name, or a longer key, names none."""
    lines = [
        ('{"id_client": "R1", "nume": "Pop"}{"id_client": "R2", "nume": "Ion"}', ["R1", "R2"]),
        ('{"id_client": "R7", "nume": "Pop"}, {"id_client": "R8", "nume": "Ion"}', ["R7", "R8"]),
        ('[{"id_client": "R1"}, {"id_client" : "R2"}]', ["R1", "R2"]),
        ("{'id_client': 'R9'} {'id_client': 'R10'}", ["R9", "R10"]),  # single-quoted, as the lenient reader takes them
        ('{"id_client": "R3", "nume": "Pop"} garbage', ["R3"]),
        ("{'id_client': 'R9', 'nume': 'Pop'}", ["R9"]),
        ('{"id_client": "R1", "nota": "\\"id_client\\": R2"}', ["R1"]),  # the name inside a value is no key
        ('{"id_client_vechi": "R0", "id_client": "R1"}', ["R1"]),
        ('{"id_client": "R1", "nume": "Pop"}{"id_client": "R1", "nume": "Pop"}', ["R1"]),  # one record, twice
        ('{"id_client": 17}{"id_client": 18}', ["17", "18"]),
        ("R1;Pop;Ion;;extra", []),  # CSV text names no key
        (None, None),  # an erased subject's row holds no text
        ('{"id_client": "RO\\/78"}{"id_client": "\\u015eT-1 "}', ["RO/78", "ŞT-1"]),  # as landed: decoded, trimmed
        ('{"id_client": "R4", "nume": NaN}', ["R4"]),  # held under no id: no lenient reader finds one
        ('{"id_client": " "}', []),
    ]
    schema = "line string, ids array<string>"
    actual = spark.createDataFrame([(line, None) for line, _ in lines], schema).select(
        "line", ingest.named_record_ids(F.col("line"), "id_client").alias("ids")
    )
    expected = spark.createDataFrame(lines, schema)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_named_record_ids_read_a_megabyte_value_without_overflowing_the_jvms_stack(spark):
    value = "x" * 1_000_000
    escaped = 'a\\"' * 100_000  # every other character an escape
    lines = [f'{{"id_client": "{value}"}}', f'{{"id_client": "{escaped}"}}{{"id_client": "R2"}}']
    named = spark.createDataFrame([(line,) for line in lines], "line string").select(
        ingest.named_record_ids(F.col("line"), "id_client").alias("ids")
    )
    assert [[len(i) for i in r["ids"]] for r in named.collect()] == [[1_000_000], [200_000, 2]]


def test_a_jsonl_record_ends_at_lf_only_and_a_line_python_cannot_parse_is_quarantined(spark, cfg, tmp_path):
    deep = "[" * 2000 + "]" * 2000  # deeper than Python's and Jackson's parsers go
    lines = [
        '{"id_client": "R1",\r"nume": "Pop"}',  # RFC 8259: a CR between tokens is whitespace
        '{"id_client": "R2", "nume": "Ion"}\r',  # CRLF
        "[" * 2000,
        '{"id_client": "R3", "nume": ' + deep + "}",
        '{"id_client": "R4", "nume": NaN}',  # no JSON, though Python's json and Jackson read NaN
        '{"id_client": "R5", "nume": Infinity}',
    ]
    path = tmp_path / "customers.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    source = dataclasses.replace(cfg.source("ro_shop"), path=path)
    ingest.check_source_schema(source)  # no drift: the sample skips what is no JSON object
    actual = validated_rows(spark, source).select("source_record_id", "last_name", ingest.REASON)
    expected = spark.createDataFrame(
        [
            ("R1", "Pop", None),
            ("R2", "Ion", None),
            (None, None, "malformed_record"),
            (None, None, "malformed_record"),
            (None, None, "malformed_record"),  # no lenient reader finds an id in these three
            (None, None, "malformed_record"),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_malformed_line_of_an_erased_subject_is_quarantined_without_its_content(spark, cfg, tmp_path):
    from jobs.canonical import subject_hash

    path = tmp_path / "customers.jsonl"
    lines = ["{'id_client': 'R1', 'nume': 'Zzerased'}", '{"id_client": "R2", "nume": "Pop"} trailing']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = dataclasses.replace(cfg.source("ro_shop"), path=path)
    register = spark.createDataFrame([("ro_shop", "R1")], "source_system string, source_record_id string").select(
        subject_hash().alias("subject_hash")
    )
    validated = validated_rows(spark, source).transform(ingest.suppress_erased_subjects, register)
    actual = ingest.to_quarantine(validated, F.lit(None).cast("string"), "r1", dt.datetime(2026, 1, 1)).select(
        "source_record_id", "reason", "raw_record"
    )
    expected = spark.createDataFrame(
        [(None, ingest.ERASED_SUBJECT, None), ("R2", "malformed_record", lines[1])], actual.schema
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_csv_beginning_with_a_byte_order_mark_lands_its_first_column(spark, cfg, tmp_path):
    path = tmp_path / "ua.csv"
    path.write_text("\ufeff" + CSV_HEADER + "\n" + ua_row("UA-1", "вул. Хрещатик, 1") + "\n", encoding="utf-8")
    source = dataclasses.replace(cfg.source("ua_crm"), path=path)
    ingest.check_source_schema(source)  # no drift
    actual = validated_rows(spark, source).select("source_record_id", "last_name", ingest.REASON)
    expected = spark.createDataFrame([("UA-1", "Шевченко", None)], actual.schema)
    assert_df_equality(actual, expected, ignore_nullable=True)


@pytest.mark.parametrize(
    ("encoding", "codec", "last_name", "street"),
    [
        ("windows-1251", "cp1251", "Шевченко", "вул. Хрещатик, 1"),
        ("latin2", "iso8859-2", "Ştefănescu", "Strada Mărţişor"),  # ţ ş: in ISO 8859-2, not in 8859-1
    ],
)
def test_a_csv_in_a_regional_single_byte_encoding_lands_its_letters(
    spark, tmp_path, encoding, codec, last_name, street
):
    source = load_config(edited_conf(tmp_path, "sources.yaml", (("sources", 0, "encoding"), encoding))).source("ua_crm")
    assert source.encoding == codec  # the name Spark's reader (Java) knows
    path = tmp_path / "ua.csv"
    row = f"UA-1;{last_name};Ivan;;24.08.1991;m;;;{street};Kyiv;;;01.03.2025 10:15"
    path.write_bytes(f"{CSV_HEADER}\n{row}\n".encode(codec))
    source = dataclasses.replace(source, path=path)
    ingest.check_source_schema(source)
    actual = validated_rows(spark, source).select("source_record_id", "last_name", "street", ingest.REASON)
    expected = spark.createDataFrame([("UA-1", last_name, street, None)], actual.schema)
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_an_encoding_spark_cannot_read_csv_in_is_a_config_problem(tmp_path):
    # Python knows mac-cyrillic, Java only as x-MacCyrillic
    conf = edited_conf(tmp_path, "sources.yaml", (("sources", 0, "encoding"), "mac-cyrillic"))
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert err.value.problems == [
        "sources.yaml: sources[0] (ua_crm).encoding: is not an encoding Spark's CSV reader (Java) knows, "
        "got 'mac-cyrillic'"
    ]


@pytest.mark.parametrize(
    ("encoding", "row"),
    [("cp1251", ua_row("UA-1", "вул. Хрещатик, 1")), ("iso8859-2", "UA-1;Ştefănescu;Ion;;24.08.1991;m;;;;;;;")],
)
def test_a_utf8_extract_of_a_source_set_to_a_single_byte_encoding_fails_before_it_lands_garbled(
    cfg, tmp_path, encoding, row
):
    """windows-1251 reads any bytes, so a UTF-8 export read in it gave Шевченко as РЁРµРІС‡РµРЅРєРѕ, landed, with no
    reason: the extract fails as drift does, naming both encodings and no value. Its own encoding still reads."""
    path = tmp_path / "ua.csv"
    text = CSV_HEADER + "\n" + row + "\n"
    source = dataclasses.replace(cfg.source("ua_crm"), path=path, encoding=encoding)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SourceSchemaError) as raised:
        ingest.check_source_schema(source)
    assert str(raised.value) == (
        f"source 'ua_crm': the extract is UTF-8 text, but its encoding is set to {encoding}, which would read every "
        "letter outside ASCII as two or three others: set its encoding to UTF-8"
    )
    ingest.check_source_schema(dataclasses.replace(source, encoding="UTF-8"))
    path.write_text(text, encoding=encoding)
    ingest.check_source_schema(source)


@pytest.mark.parametrize("drift", ["fail", "allow_added"])
def test_a_header_quote_left_open_fails_without_the_records_it_would_swallow(cfg, tmp_path, drift):
    path = tmp_path / "ua.csv"
    rows = "\n".join(ua_row(f"UA-{i}", "вул. Хрещатик, 1") for i in range(3))
    path.write_text(CSV_HEADER + ';"notes\n' + rows + "\n", encoding="utf-8")
    source = dataclasses.replace(cfg.source("ua_crm"), path=path, schema_drift=drift)
    with pytest.raises(SourceSchemaError) as raised:
        ingest.check_source_schema(source)
    assert str(raised.value) == (
        "source 'ua_crm': unreadable header line (a quote it opens and does not close, or an overlong name)"
    )


def test_a_csv_header_is_its_first_line_that_is_not_blank_and_names_each_column_once(cfg, tmp_path):
    path = tmp_path / "ua.csv"
    source = dataclasses.replace(cfg.source("ua_crm"), path=path)
    path.write_text("\n \n" + CSV_HEADER + "\n" + ua_row("UA-1", "вул. Хрещатик, 1") + "\n", encoding="utf-8")
    ingest.check_source_schema(source)  # no drift
    # Empty names (trailing delimiters) and a repeated unmapped column: Spark renames them apart; drift, not an error.
    path.write_text(f"{CSV_HEADER};;;notes;NOTES\n", encoding="utf-8")
    with pytest.raises(SourceSchemaError, match=r"schema drift \(column\(s\) neither mapped nor in ignored_columns"):
        ingest.check_source_schema(source)
    ingest.check_source_schema(dataclasses.replace(source, schema_drift="allow_added"))
    path.write_text(f"{CSV_HEADER};IMIA;olena@example.org;olena@example.org\n", encoding="utf-8")
    with pytest.raises(SourceSchemaError) as raised:
        ingest.check_source_schema(source)
    assert str(raised.value) == "source 'ua_crm': mapped column(s) named twice in the header: imia"


def test_a_missing_mapped_column_fails_before_anything_is_written(spark, cfg, tmp_path):
    path = tmp_path / "drift.csv"
    path.write_text(CSV_HEADER.replace("prizvyshche", "surname") + "\n", encoding="utf-8")
    source = dataclasses.replace(cfg.source("ua_crm"), path=path)
    with pytest.raises(SourceSchemaError, match=r"ua_crm.*prizvyshche"):
        ingest.read_source(spark, source)


@pytest.fixture(scope="module")
def ingested(spark, corrupt_demo_cfg):
    return corrupt_demo_cfg, ingest.run(spark, corrupt_demo_cfg, run_id="run-1")


def test_every_bad_row_is_quarantined_with_its_reason(spark, ingested):
    cfg, _ = ingested
    actual = delta_io.read_delta(spark, cfg.tables.quarantine).select("source_system", "source_record_id", "reason")
    expected = spark.createDataFrame(
        [
            ("ua_crm", "UA-9999989", "wrong_field_count"),  # the first record's values with extra fields
            ("ua_crm", "UA-9999990", "bad_encoding"),
            ("ro_shop", None, "malformed_record"),
            ("ro_shop", "9999991", "unparseable_date"),
            ("eu_loyalty", None, "missing_source_id"),
            ("eu_loyalty", "LM99999993", "invalid_type"),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_counts_reconcile_read_equals_landed_plus_quarantined(spark, ingested):
    cfg, result = ingested
    bronze = delta_io.read_delta(spark, cfg.tables.bronze)
    truth_rows = sum(1 for _ in (cfg.ground_truth / "records.csv").open()) - 1
    assert result.reconciled
    assert bronze.count() == truth_rows  # every generated good record landed once
    assert sum(s.quarantined for s in result.sources) == 6
    assert sum(s.read for s in result.sources) == truth_rows + 6
    audit = delta_io.read_delta(spark, cfg.tables.ingest_runs)
    assert audit.where("rows_read <> rows_landed + rows_quarantined").count() == 0


def test_bronze_carries_lineage_and_commits_are_tagged_with_the_run_id(spark, ingested):
    cfg, _ = ingested
    bronze = delta_io.read_delta(spark, cfg.tables.bronze)
    lineage = bronze.select(
        F.count(F.when(F.col("run_id") == "run-1", 1)).alias("tagged"),
        F.count(F.when(F.length("record_hash") == 64, 1)).alias("hashed"),
        F.count(F.when(F.col("source_file").rlike(r"/(customers\.csv|customers\.jsonl|members\.parquet)$"), 1)).alias(
            "with_file"
        ),
        F.count("*").alias("rows"),
    ).first()
    assert lineage["tagged"] == lineage["hashed"] == lineage["with_file"] == lineage["rows"] > 0
    for table in (cfg.tables.bronze, cfg.tables.quarantine, cfg.tables.ingest_runs):
        assert delta_io.history(table)[-1]["run_id"] == "run-1"


def test_rerunning_the_same_batch_adds_nothing(spark, ingested):
    cfg, _ = ingested
    before = {t: delta_io.table_version(t) for t in (cfg.tables.bronze, cfg.tables.quarantine)}
    rows_before = delta_io.read_delta(spark, cfg.tables.bronze).count()
    result = ingest.run(spark, cfg, run_id="run-2")
    assert result.bronze_inserted == 0
    assert {t: delta_io.table_version(t) for t in before} == before
    assert delta_io.read_delta(spark, cfg.tables.bronze).count() == rows_before


def test_a_retry_of_a_run_on_the_same_extracts_changes_no_table(spark, ingested):
    cfg, _ = ingested
    tables = (cfg.tables.bronze, cfg.tables.quarantine, cfg.tables.ingest_runs)
    before = {t: delta_io.table_version(t) for t in tables}
    ingest.run(spark, cfg, run_id="run-1")  # an Airflow retry of the fixture's run, seconds later
    assert {t: delta_io.table_version(t) for t in tables} == before


def test_an_incremental_rerun_of_a_run_records_the_counts_its_first_attempt_did(spark, tmp_path):
    from jobs import demo_data
    from tests.conftest import config_in

    cfg = config_in(tmp_path)
    demo_data.generate(cfg, people=5, seed=8)

    def counts(run_id: str) -> dict[str, int]:
        rows = delta_io.query_delta(
            f"SELECT source_system, rows_read FROM r WHERE run_id = '{run_id}'", r=cfg.tables.ingest_runs
        )
        return {r["source_system"]: r["rows_read"] for r in rows.to_pylist()}

    ingest.run(spark, cfg, run_id="r1", mode="incremental")  # nothing read before: every extract is new
    first = counts("r1")
    assert len(first) == 3 and all(first.values())
    ingest.run(spark, cfg, run_id="r1", mode="incremental")  # the same run again (an Airflow retry)
    assert counts("r1") == first
    ingest.run(spark, cfg, run_id="r2", mode="incremental")  # a new run on the same extracts skips them
    assert counts("r2") == dict.fromkeys(first, 0)


def ua_record(record_id: str, last_name: str, born: str = "24.08.1991") -> dict[str, str]:
    return {
        "source_record_id": record_id,
        "last_name": last_name,
        "first_name": "Олександр",
        "date_of_birth": born,
        "updated_at": "01.03.2025 10:15",
    }


def test_an_incremental_run_reads_a_changed_extract_whole_and_skips_the_unchanged_ones(spark, cfg):
    from jobs import demo_data
    from tests.conftest import write_ua_crm

    demo_data.generate(cfg, people=5, seed=8)
    first = [ua_record("UA-1", "Шевченко"), ua_record("UA-2", "Коваль")]
    write_ua_crm(cfg, first)
    ingest.run(spark, cfg, run_id="r1", mode="incremental")
    write_ua_crm(cfg, [*first, ua_record("UA-3", "Бондар")])  # one record added; the other extracts as they were

    result = ingest.run(spark, cfg, run_id="r2", mode="incremental")

    # A changed extract is not skipped, so it is read whole (README: incremental skips only byte-identical
    # extracts); bronze's merge then adds only the new record.
    audit = (
        delta_io.read_delta(spark, cfg.tables.ingest_runs)
        .where("run_id = 'r2'")
        .select("source_system", "rows_read", "rows_landed", "rows_quarantined")
    )
    expected_audit = spark.createDataFrame(
        [("ua_crm", 3, 3, 0), ("ro_shop", 0, 0, 0), ("eu_loyalty", 0, 0, 0)], audit.schema
    )
    assert_df_equality(audit, expected_audit, ignore_row_order=True, ignore_nullable=True)
    assert result.bronze_inserted == 1
    bronze = (
        delta_io.read_delta(spark, cfg.tables.bronze)
        .where("source_system = 'ua_crm'")
        .select("source_record_id", "last_name", "run_id")
    )
    expected_bronze = spark.createDataFrame(
        [("UA-1", "Шевченко", "r1"), ("UA-2", "Коваль", "r1"), ("UA-3", "Бондар", "r2")], bronze.schema
    )
    assert_df_equality(bronze, expected_bronze, ignore_row_order=True, ignore_nullable=True)


def test_a_record_changed_back_at_a_source_giving_no_newer_update_time_is_current_again(spark, cfg):
    """Bronze holds each version once: the version a record goes back to must still become current again, unless
    an update time outranks it (a replayed old extract)."""
    from jobs import demo_data, standardize
    from tests.conftest import write_ua_crm

    demo_data.generate(cfg, people=5, seed=8)

    def extract(run_id: str, never_updated: str, undated: str, dated: str, updated_at: str) -> None:
        undated_row = {k: v for k, v in ua_record("UA-2", undated).items() if k != "updated_at"}
        dated_row = {**ua_record("UA-3", dated), "updated_at": updated_at}
        typo_row = {**ua_record("UA-4", never_updated), "updated_at": "01.03.2205 10:15"}  # taken as its landing time
        write_ua_crm(cfg, [ua_record("UA-1", never_updated), undated_row, dated_row, typo_row])
        ingest.run(spark, cfg, run_id=run_id)

    extract("r1", "Шевченко", "Коваль", "Бондар", "01.03.2025 10:15")
    extract("r2", "Шевчук", "Ковальчук", "Бондаренко", "02.03.2025 10:15")
    extract("r3", "Шевченко", "Коваль", "Бондар", "01.03.2025 10:15")  # the first extract again
    version = DeltaTable(str(cfg.tables.bronze)).version()
    ingest.run(spark, cfg, run_id="r3")  # a retry changes nothing
    assert DeltaTable(str(cfg.tables.bronze)).version() == version

    current = (
        delta_io.read_delta(spark, cfg.tables.bronze)
        .where("source_system = 'ua_crm'")
        .transform(standardize.latest_bronze_records)
        .select("source_record_id", "last_name", "run_id")
    )
    expected = spark.createDataFrame(
        [
            ("UA-1", "Шевченко", "r3"),
            ("UA-2", "Коваль", "r3"),
            ("UA-3", "Бондаренко", "r2"),
            ("UA-4", "Шевченко", "r3"),
        ],
        current.schema,
    )
    assert_df_equality(current, expected, ignore_row_order=True, ignore_nullable=True)


def test_an_incremental_run_reads_an_extract_again_after_an_attempt_died_before_recording_the_one_it_landed(
    spark, cfg, monkeypatch
):
    """r2 landed a changed record in bronze and died before its counts; the source then sent r1's extract back.
    Compared with r1's recorded digest alone, incremental skipped it and r2's version stayed current."""
    from jobs import demo_data, standardize
    from tests.conftest import write_ua_crm

    demo_data.generate(cfg, people=5, seed=8)
    write_ua_crm(cfg, [ua_record("UA-1", "Шевченко")])
    ingest.run(spark, cfg, run_id="r1", mode="incremental")
    write_ua_crm(cfg, [ua_record("UA-1", "Шевчук")])
    merge = delta_io.merge_delta

    def dies_at_the_quarantine(df, path, **kwargs):
        if Path(path) == cfg.tables.quarantine:
            raise RuntimeError("killed after bronze")
        return merge(df, path, **kwargs)

    monkeypatch.setattr(delta_io, "merge_delta", dies_at_the_quarantine)
    with pytest.raises(RuntimeError, match="killed after bronze"):
        ingest.run(spark, cfg, run_id="r2", mode="incremental")
    monkeypatch.setattr(delta_io, "merge_delta", merge)
    write_ua_crm(cfg, [ua_record("UA-1", "Шевченко")])  # r1's extract, byte for byte

    ingest.run(spark, cfg, run_id="r3", mode="incremental")

    current = (
        delta_io.read_delta(spark, cfg.tables.bronze)
        .where("source_system = 'ua_crm'")
        .transform(standardize.latest_bronze_records)
        .select("source_record_id", "last_name", "run_id")
    )
    assert_df_equality(
        current, spark.createDataFrame([("UA-1", "Шевченко", "r3")], current.schema), ignore_nullable=True
    )


def test_an_ingest_in_the_same_second_as_the_last_or_after_the_clock_was_set_back_loads_after_it(spark, cfg):
    """Versions are ranked by load time. When two ingests fell within one second, they shared it, and a record's
    older version could stay current (a CI run of the test above)."""
    from jobs import demo_data
    from tests.conftest import write_ua_crm

    noon = dt.datetime(2026, 1, 1, 12, 0, 0, 700000, tzinfo=dt.UTC)
    assert ingest.load_time(cfg, noon) == dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)  # nothing loaded yet
    demo_data.generate(cfg, people=5, seed=8)
    write_ua_crm(cfg, [ua_record("UA-1", "Шевченко")])
    ingest.run(spark, cfg, run_id="r1")
    (loaded,) = set(
        DeltaTable(str(cfg.tables.bronze)).to_pyarrow_table(columns=["ingested_at"])["ingested_at"].to_pylist()
    )
    second = dt.timedelta(seconds=1)

    assert ingest.load_time(cfg, loaded) == loaded + second
    assert ingest.load_time(cfg, loaded + dt.timedelta(milliseconds=500)) == loaded + second
    assert ingest.load_time(cfg, loaded - dt.timedelta(days=1)) == loaded + second  # the clock set back
    assert ingest.load_time(cfg, loaded + dt.timedelta(seconds=3.7)) == loaded + 3 * second


def test_an_incremental_run_reads_an_unchanged_extract_again_once_its_source_settings_change(spark, cfg):
    from jobs import demo_data
    from tests.conftest import write_ua_crm

    demo_data.generate(cfg, people=5, seed=8)
    write_ua_crm(cfg, [ua_record("UA-1", "Шевченко"), ua_record("UA-2", "Коваль")])
    ua = cfg.source("ua_crm")
    wrong = dataclasses.replace(
        cfg, sources=tuple(dataclasses.replace(s, date_format="dd/MM/yyyy") if s is ua else s for s in cfg.sources)
    )
    ingest.run(spark, wrong, run_id="r1", mode="incremental")  # every date of birth unparseable
    ingest.run(spark, cfg, run_id="r2", mode="incremental")  # the date format fixed; the extract as it was
    ingest.run(spark, cfg, run_id="r3", mode="incremental")  # nothing changed: skipped

    audit = delta_io.read_delta(spark, cfg.tables.ingest_runs).where("source_system = 'ua_crm'")
    actual = audit.select("run_id", "rows_read", "rows_landed", "rows_quarantined")
    expected = spark.createDataFrame([("r1", 2, 0, 2), ("r2", 2, 2, 0), ("r3", 0, 0, 0)], actual.schema)
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_every_record_of_an_extract_is_read_and_either_lands_in_bronze_or_in_quarantine(spark, cfg):
    from jobs import demo_data

    demo_data.generate(cfg, people=5, seed=8)
    records = [
        ua_row("UA-1", "вул. Хрещатик 1"),
        ua_row("UA-2", '"вул. Франка 3\nкв. 5"'),  # one record on two lines
        ua_row("UA-3", "вул. Бандери 7", ";unexpected"),  # wrong_field_count
        "UA-4;Коваль;Ірина;;31.02.1990;ж;;;;;;;01.03.2025 10:16",  # unparseable_date
        ";Бондар;Анна;;01.01.1980;ж;;;;;;;01.03.2025 10:17",  # missing_source_id
        ua_row("UA-6", "вул. Шевченка 2"),
    ]
    written = 6  # counted by hand: records, not lines
    cfg.source("ua_crm").path.write_text("\n".join([CSV_HEADER, *records]) + "\n", encoding="utf-8")

    result = ingest.run(spark, cfg, run_id="r1")

    ua = next(s for s in result.sources if s.source_system == "ua_crm")
    assert ua.read == written
    audit = delta_io.read_delta(spark, cfg.tables.ingest_runs).where("run_id = 'r1' AND source_system = 'ua_crm'")
    assert audit.first()["rows_read"] == written
    # Independent of the run's own counts: what the tables hold for this source and run.
    bronze = (
        delta_io.read_delta(spark, cfg.tables.bronze)
        .where("source_system = 'ua_crm' AND run_id = 'r1'")
        .select("source_record_id")
    )
    quarantine = (
        delta_io.read_delta(spark, cfg.tables.quarantine)
        .where("source_system = 'ua_crm' AND run_id = 'r1'")
        .select("source_record_id", "reason")
    )
    assert bronze.count() + quarantine.count() == written
    assert_df_equality(
        bronze,
        spark.createDataFrame([("UA-1",), ("UA-2",), ("UA-6",)], bronze.schema),
        ignore_row_order=True,
        ignore_nullable=True,
    )
    expected_quarantine = spark.createDataFrame(
        [("UA-3", "wrong_field_count"), ("UA-4", "unparseable_date"), (None, "missing_source_id")], quarantine.schema
    )
    assert_df_equality(quarantine, expected_quarantine, ignore_row_order=True, ignore_nullable=True)
