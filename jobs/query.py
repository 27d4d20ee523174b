"""Analysts' SQL over the lakehouse: DuckDB over delta-rs Arrow datasets, no Spark needed.

    python -m jobs.query "SELECT region_count, count(*) FROM profiles GROUP BY 1"
    python -m jobs.query --csv out.csv "SELECT * FROM profiles"

CSV output goes through defusedcsv: a cell that a spreadsheet would run as a formula is prefixed with a quote.

Every Delta table is a view named as in TablePaths (profiles, profile_sources, profile_lineage,
profile_permissions, record_profiles, pairwise_matches, silver, bronze, ...), read at its current version.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from defusedcsv import csv
from tabulate import tabulate

from jobs import delta_io, publication
from jobs.config import DATA_ROOTS, PUBLISHED_TABLES, PipelineConfig, TablePaths, load_config
from jobs.errors import IdresError

# defusedcsv escapes cells starting with = + - @ | %; OWASP adds tab and carriage return.
FORMULA_PREFIXES = ("=", "+", "-", "@", "|", "%", "\t", "\r")
PLAIN_NUMBER = re.compile(r"-?[0-9,.]+")  # what defusedcsv leaves as it is, though it starts with a minus
# A query is one statement that reads: SELECT (with FROM-first, VALUES, DESCRIBE, SHOW, SUMMARIZE), EXPLAIN, and
# PIVOT, which DuckDB plans as several statements (MULTI) when it first collects the pivoted values.
READING_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.MULTI})
# How a statement that reads may begin (after comments and opening parentheses).
READING_WORDS = frozenset(
    {"SELECT", "FROM", "WITH", "VALUES", "PIVOT", "PIVOT_WIDER", "PIVOT_LONGER", "UNPIVOT", "EXPLAIN", "DESCRIBE"}
    | {"SUMMARIZE", "SHOW", "DESC"}
)
# Statements that write or change settings, refused outside parentheses in a statement DuckDB calls MULTI.
WRITING_WORDS = frozenset(
    {"INSERT", "UPDATE", "DELETE", "CREATE", "COPY", "ATTACH", "DETACH", "DROP", "ALTER", "INSTALL", "LOAD", "SET"}
    | {"RESET", "PRAGMA", "EXPORT", "IMPORT", "CALL", "MERGE", "USE", "CHECKPOINT", "VACUUM", "TRUNCATE"}
)
# DuckDB errors about the statement itself, whose message quotes the SQL as typed or names tables and columns.
# Others (a failed cast, a value out of range) may quote a value of the tables, so their message is not shown; nor
# a binder's when the SQL pivots, as a PIVOT names columns by values.
STATEMENT_ERRORS = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException)
PIVOTING = re.compile(r"\b(?:UN)?PIVOT", re.IGNORECASE)
OPEN_ATTEMPTS = 3
BATCH_ROWS = 65_536  # rows DuckDB hands over at a time
TABLE_MAX_ROWS = 1_000  # rows the table format shows unless told otherwise
# No file or network access: with external access off, DuckDB still allows its temporary directory (.tmp in
# the working directory), where an EXPORT DATABASE or COPY would leave table copies that no erasure finds. So no
# temporary directory either (a query that outgrows memory fails instead of spilling), no extension loaded or
# installed, and the configuration locked.
SANDBOX = {
    "enable_external_access": False,
    "temp_directory": "",
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,
}


class QueryError(IdresError):
    """An analyst's SQL is not one statement that reads."""


def connect(cfg: PipelineConfig) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a view of every existing Delta table of the lakehouse, and nothing else: no file
    or network access (an analyst's `COPY ... TO`, `read_csv` or `ATTACH` would write past defusedcsv, over a
    table's files, or read outside the lakehouse), and its configuration locked (SANDBOX).

    A publication commits the published tables one by one, so the views are made again while one is journalled
    (after publication.complete_for_readers) or a published table got a commit as they were made: never half of
    a publication."""
    con = duckdb.connect(config=SANDBOX)
    for _ in range(OPEN_ATTEMPTS):
        publication.complete_for_readers(cfg, "query")
        before = _published_versions(cfg)
        _register_tables(con, cfg)
        if not publication.publishing(cfg) and _published_versions(cfg) == before:
            return con
    raise QueryError(f"the published tables changed each of the {OPEN_ATTEMPTS} times they were opened; try again")


def _published_versions(cfg: PipelineConfig) -> dict[str, int | None]:
    """The versions of what a publication commits: the published tables, then its audit row (unify_runs)."""
    return {name: delta_io.table_version(getattr(cfg.tables, name)) for name in (*PUBLISHED_TABLES, "unify_runs")}


def _register_tables(con: duckdb.DuckDBPyConnection, cfg: PipelineConfig) -> None:
    """A view of each existing Delta table at its current version (one already registered is replaced)."""
    for name, path in cfg.tables.all().items():
        if delta_io.table_exists(path):
            con.register(name, delta_io.arrow_dataset(path, string_views=True))


def reading_statement(sql: str) -> str:
    """sql, when it is one statement that reads (READING_STATEMENTS); a QueryError naming what it is otherwise."""
    statements = duckdb.extract_statements(sql)
    if not statements:
        raise QueryError("no SQL given: make query SQL='SELECT ...' (or python -m jobs.query 'SELECT ...')")
    if len(statements) != 1:
        raise QueryError(f"a query is one SQL statement; this is {len(statements)}")
    kind = statements[0].type
    # DuckDB calls any statement holding a PIVOT several (MULTI): a COPY (PIVOT ...) TO too.
    first = next((word for _, word in sql_words(sql) if word != "("), "")
    if kind not in READING_STATEMENTS or (kind == duckdb.StatementType.MULTI and first.upper() not in READING_WORDS):
        raise QueryError(f"a query reads the tables; this is a statement of type {kind.name}")
    if kind == duckdb.StatementType.EXPLAIN or first.upper() == "EXPLAIN":
        reading_statement(explained_statement(sql))  # EXPLAIN ANALYZE runs what it explains, which must read too
    if kind == duckdb.StatementType.MULTI and (writing := WRITING_WORDS & set(top_level_words(sql))):
        # A PIVOT makes any statement MULTI, a WITH list's writing one too: WITH p AS (PIVOT ...) INSERT INTO ...
        raise QueryError(f"a query reads the tables; this one holds {', '.join(sorted(writing))}")
    return sql


def top_level_words(sql: str) -> list[str]:
    """The SQL's words outside parentheses, upper-cased (quoted names keep their quotes)."""
    depth, words = 0, []
    for _, word in sql_words(sql):
        if word == "(":
            depth += 1
        elif word == ")":
            depth -= 1
        elif depth == 0:
            words.append(word.upper())
    return words


def sql_words(sql: str) -> list[tuple[int, str]]:
    """The SQL's tokens outside comments, each with its byte offset in the UTF-8 text and its text. From DuckDB's
    own tokenizer, as its comments nest (`/* /* */ ... */`), which no regular expression follows."""
    text = sql.encode("utf-8")
    tokens = duckdb.tokenize(sql)
    ends = [start for start, _ in tokens[1:]] + [len(text)]
    words = [
        (start, text[start:end].decode("utf-8", "replace").strip().strip("\ufeff").strip())
        for (start, kind), end in zip(tokens, ends, strict=True)
        if kind != duckdb.token_type.comment
    ]
    return [(start, word) for start, word in words if word]


def explained_statement(sql: str) -> str:
    """The statement an EXPLAIN statement explains: after EXPLAIN and its ANALYZE or option list `(...)`."""
    words = sql_words(sql)
    after = 1  # the word after EXPLAIN
    if after < len(words) and words[after][1].upper() in ("ANALYZE", "ANALYSE"):
        after += 1
    elif after < len(words) and words[after][1] == "(":
        after = next((i + 1 for i in range(after, len(words)) if words[i][1] == ")"), len(words))
    return sql.encode("utf-8")[words[after][0] :].decode("utf-8") if after < len(words) else ""


def query(cfg: PipelineConfig, sql: str) -> pa.Table:
    """The result of sql, one statement that reads, over the lakehouse, as Arrow."""
    batches = query_batches(cfg, sql)
    return pa.Table.from_batches(list(_batches(batches)), batches.schema)


def query_batches(cfg: PipelineConfig, sql: str) -> pa.RecordBatchReader:
    """The result of sql, one statement that reads, over the lakehouse, as Arrow batches computed as they are read
    (DuckDB's errors too): an export of millions of rows never holds them all at once."""
    statement = reading_statement(sql)  # before connect(), which may wait for the lock
    return connect(cfg).sql(statement).to_arrow_reader(BATCH_ROWS)


def safe_cell(value: object) -> object:
    """A cell that a spreadsheet will not run as a formula: one that starts with a formula character, also
    after leading whitespace, control characters (NUL, ESC) or invisible format characters (a BOM, a zero-width
    space) or written full-width (＝, ＋, ＠: NFKC folds them), is prefixed with a quote. A plain number, also a
    negative one, stays as it is, unless a tab or line break opens it."""
    if not isinstance(value, str):
        return value
    folded = unicodedata.normalize("NFKC", value)
    shown = "".join(itertools.dropwhile(lambda ch: ch.isspace() or unicodedata.category(ch) in ("Cf", "Cc"), folded))
    formula = any(text.startswith(FORMULA_PREFIXES) for text in (folded, shown))
    return "'" + value if formula and not PLAIN_NUMBER.fullmatch(folded.strip(" ")) else value


# C0 and C1 controls (an escape sequence can retitle a terminal, write its clipboard or hide text) and the bidi
# overrides (which reorder what is shown), shown as escapes in the table printed to a terminal.
TERMINAL_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def shown_cell(value: object) -> object:
    """A cell as the table format prints it: its control characters as escapes (`\\x1b`), the rest as it is."""
    if not isinstance(value, str):
        return value
    return TERMINAL_CONTROLS.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), value)


def _temporal_as_text(data_type: pa.DataType) -> pa.DataType:
    """data_type with every date and time in it (in lists, structs and maps too) as text."""
    if pa.types.is_temporal(data_type):
        return pa.string()
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return pa.list_(_temporal_as_text(data_type.value_type))
    if pa.types.is_struct(data_type):
        return pa.struct([pa.field(f.name, _temporal_as_text(f.type)) for f in data_type])
    if pa.types.is_map(data_type):
        return pa.map_(_temporal_as_text(data_type.key_type), _temporal_as_text(data_type.item_type))
    return data_type


def python_values(column: pa.Array | pa.ChunkedArray) -> list[object]:
    """A column's values as Python objects; dates and times past Python's year 9999 (which a landed `9999-12-31`
    with a zone west of UTC becomes), also inside lists and structs, as Arrow writes them as text, not an
    OverflowError."""
    try:
        return column.to_pylist()
    except (OverflowError, ValueError):
        return pc.cast(column, _temporal_as_text(column.type)).to_pylist()


def result_rows(result: pa.Table | pa.RecordBatch) -> list[tuple[object, ...]]:
    """The rows by column position: a join's columns of one name (`p.*, m.*`) each keep their own value."""
    return list(zip(*(python_values(column) for column in result.columns), strict=True))


def _batches(result: pa.Table | pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """The result's batches; DuckDB's error in computing one (which Arrow hands over as an OSError quoting DuckDB's
    message, which may quote a value) as a QueryError that names none."""
    if isinstance(result, pa.Table):
        yield from result.to_batches()
        return
    while True:
        try:
            batch = result.read_next_batch()
        except StopIteration:
            return
        except OSError:
            raise QueryError(
                "DuckDB failed computing the result (its message may quote a value, so it is not shown)"
            ) from None
        yield batch


def write_csv(result: pa.Table | pa.RecordBatchReader, out: TextIO, terminal: bool = False) -> int:
    """The result as CSV with a header row, every cell safe to open in a spreadsheet (OWASP CSV injection), written
    batch by batch; returns the rows written. Every cell is quoted: a spreadsheet whose list separator is `;` (uk,
    ro and de locales) would split an unquoted `Kyiv;=1+1` into a second cell that starts a formula. To a
    terminal, control characters show as escapes (shown_cell)."""

    def cell(value: object) -> object:
        return shown_cell(safe_cell(value)) if terminal else safe_cell(value)

    writer = csv.writer(out, quoting=csv.QUOTE_ALL)
    writer.writerow([cell(name) for name in result.schema.names])  # a PIVOT names columns by values
    rows = 0
    for batch in _batches(result):
        writer.writerows([cell(v) for v in row] for row in result_rows(batch))
        rows += batch.num_rows
    return rows


def print_table(result: pa.RecordBatchReader, out: TextIO, max_rows: int) -> None:
    """The result's first max_rows rows (0: all) as a table, control characters as escapes (shown_cell), and a
    line saying when rows were left out: a table of millions of rows is no answer to read."""
    rows: list[list[object]] = []
    more = False
    for batch in _batches(result):
        rows.extend([shown_cell(v) for v in row] for row in result_rows(batch))
        if max_rows and len(rows) > max_rows:
            more = True
            del rows[max_rows:]
            break
    headers = [shown_cell(c) for c in result.schema.names]
    print(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True), file=out)  # text as it is
    if more:
        print(f"(the first {max_rows} rows; more not shown: --max-rows 0 shows all, --csv OUT writes all)", file=out)


def export_target(cfg: PipelineConfig, out: Path) -> Path:
    """out, resolved, when it is a file outside the configured data folders: an export over a table's files (its
    Delta log) would break the table, and one into the reports or landing folders would put values where no
    erasure expects them. A QueryError otherwise."""
    target = out.expanduser().resolve()
    roots = {name: Path(getattr(cfg, name)).resolve() for name in DATA_ROOTS}
    inside = [name for name, root in roots.items() if target == root or root in target.parents]
    if inside:
        raise QueryError(f"--csv {out} is inside the {inside[0]} folder; write the export elsewhere")
    if target.is_dir():
        raise QueryError(f"--csv {out} is a folder; name a file")
    return target


@contextmanager
def replaced_on_success(target: Path) -> Iterator[TextIO]:
    """A text file beside target that replaces it when the block ends without an error (else it is removed): a
    failed or interrupted export leaves target as it was. The block's OSErrors are the file's (its folder missing
    or not writable, a disk full): open what it reads before."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as err:
        raise QueryError(f"cannot write {target}: {err.strerror or type(err).__name__}") from None
    part = Path(name)
    try:
        with open(fd, "w", encoding="utf-8", newline="") as fh:
            yield fh
        part.replace(target)
    except OSError as err:
        raise QueryError(f"cannot write {target}: {err.strerror or type(err).__name__}") from None
    finally:
        part.unlink(missing_ok=True)


def _row_count(text: str) -> int:
    rows = int(text)
    if rows < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {rows}")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run SQL (DuckDB dialect) over the idres Delta tables.")
    parser.add_argument("sql", help="the query; tables: " + ", ".join(TablePaths(Path(".")).all()))
    parser.add_argument("--conf", help="config directory")
    parser.add_argument("--format", choices=("table", "csv"), default="table", help="how stdout shows the result")
    parser.add_argument("--csv", type=Path, metavar="OUT", help="write the result to this CSV file instead")
    parser.add_argument(
        "--max-rows", type=_row_count, default=TABLE_MAX_ROWS, help="rows the table format shows at most (0: all)"
    )
    args = parser.parse_args(argv)
    try:
        args.sql.encode("utf-8")
    except UnicodeEncodeError:  # a byte the shell passed that is no UTF-8 (Python holds it as a lone surrogate)
        parser.exit(2, "query: the SQL is not UTF-8 text\n")
    try:
        cfg = load_config(args.conf)
        if args.csv is not None:
            target = export_target(cfg, args.csv)
            batches = query_batches(cfg, args.sql)
            with replaced_on_success(target) as fh:
                rows = write_csv(batches, fh)
            print(f"{rows} row(s) written to {args.csv}")
        elif args.format == "csv":
            write_csv(query_batches(cfg, args.sql), sys.stdout, terminal=sys.stdout.isatty())
        else:
            print_table(query_batches(cfg, args.sql), sys.stdout, args.max_rows)
    except IdresError as err:  # a config with problems, a refused statement or export file, a lakehouse busy
        parser.exit(2, f"query: {err}\n")
    except STATEMENT_ERRORS as err:  # a mistyped statement
        if isinstance(err, duckdb.CatalogException) and not any(map(delta_io.table_exists, cfg.tables.all().values())):
            parser.exit(2, f"query: the lakehouse {cfg.lakehouse} holds no table yet; make run first\n")
        if not (isinstance(err, duckdb.BinderException) and PIVOTING.search(args.sql)):
            parser.exit(2, f"query: {err}\n")
        parser.exit(2, f"query: DuckDB {type(err).__name__} (a PIVOT names columns by values, so it is not shown)\n")
    except duckdb.Error as err:
        parser.exit(2, f"query: DuckDB {type(err).__name__} (its message may quote a value, so it is not shown)\n")
    except BrokenPipeError:  # the reader stopped early (`| head`): nothing more to write, and nowhere to say so
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
