"""Typed pipeline configuration, loaded from the YAML files in conf/.

One loader, `load_config`, reads every file, checks every key, and raises a single
`ConfigError` that lists all problems at once, each naming its file and key.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import inspect
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from zoneinfo import available_timezones

import pycountry
import yaml

from jobs.canonical import (
    CANONICAL_COLUMNS,
    LAWFUL_BASES,
    LINKAGE_COLUMNS,
    MATCHING_AID_COLUMNS,
    PSEUDONYM_ATTRIBUTES,
    RECORD_ID_SEPARATOR,
    SILVER_ATTRIBUTES,
    SILVER_KEY_COLUMNS,
)
from jobs.errors import ConfigError, IdresError

SourceFormat = Literal["csv", "jsonl", "parquet"]
SOURCE_FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")
# A source name, as record ids (`name:id`) and the subject_requests DAG's record param spell it.
SOURCE_NAME = re.compile(r"[A-Za-z0-9_-]+")
# A CSV extract's encoding as Python's codecs name it (codecs.lookup(...).name) -> the name Java's charsets, and so
# Spark's CSV reader, know it by, where they differ (Spark drops a UTF-8 byte-order mark itself).
JAVA_CHARSET_NAMES = {
    "utf-8-sig": "utf-8",
    "utf-16-le": "utf-16le",
    "utf-16-be": "utf-16be",
    "utf-32-le": "utf-32le",
    "utf-32-be": "utf-32be",
}
# Python's text encodings that Java 17 knows by the same name and decodes alike (checked byte for byte with
# java.lang.String, and on Cyrillic, Romanian and astral text for UTF-16/32, which need a byte-order mark where no
# byte order is named), which Spark reads with spark.sql.legacy.javaCharsets (jobs/spark_session.py): without it,
# Spark 4 knows only seven Unicode and Latin-1 names, and a Ukrainian CRM's cp1251 or a Romanian shop's ISO 8859-2
# could not be read. Left out: the EBCDIC and CJK code pages, and cp874, cp932, cp949 and cp950, which name
# Microsoft's code pages in Python and IBM's in Java.
SPARK_CSV_CHARSETS = frozenset(
    {
        *("ascii", "utf-8", "utf-16", "utf-16le", "utf-16be", "utf-32", "utf-32le", "utf-32be"),
        *(f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 15)),
        *(f"cp{n}" for n in range(1250, 1259)),
        *("cp437", "cp737", "cp775", "cp850", "cp852", "cp855", "cp857", "cp858", "cp860", "cp861", "cp862"),
        *("cp863", "cp864", "cp865", "cp866", "cp869", "koi8-r", "koi8-u"),
    }
)
# What ingest lets through when an extract's columns differ from the mapping (sources.yaml `schema_drift`).
SCHEMA_DRIFT_MODES: tuple[str, ...] = ("fail", "allow_added", "allow")
SOURCE_KEYS: tuple[str, ...] = (
    "name",
    "region",
    "system",
    "format",
    "path",
    "encoding",
    "delimiter",
    "date_format",
    "timestamp_format",
    "time_zone",
    "default_country",
    "columns",
    "consent_feed",
    "ignored_columns",
    "schema_drift",
)
DATA_ROOTS: tuple[str, ...] = ("lakehouse", "landing", "ground_truth", "models", "reports")  # pipeline.yaml paths
# The id every job keys a record by (resolve, profile ids, expectations); splink.yaml must name it.
UNIQUE_ID_COLUMN = "record_id"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAX_FILE_NAME = 255  # bytes of a file name (ext4, xfs, APFS)
DEFAULT_CONF_DIR = PROJECT_ROOT / "conf"
SPARK_SUBMIT_CONF_FILE = "spark-submit.json"  # read by the DAGs too (dags/idres_common.py)


@dataclass(frozen=True)
class ConsentFeedConfig:
    """Where a region's consent events land, and how its columns map to the ledger."""

    path: Path
    format: SourceFormat
    columns: Mapping[str, str]
    encoding: str = "UTF-8"  # of a csv feed, as the source's
    delimiter: str = ","


@dataclass(frozen=True)
class SourceConfig:
    """One regional source system and how its columns map to the canonical raw schema."""

    name: str
    region: str
    system: str
    format: SourceFormat
    path: Path
    columns: Mapping[str, str]  # canonical column -> source column
    date_format: str  # Spark datetime pattern for date_of_birth
    timestamp_format: str  # Spark datetime pattern for updated_at
    default_country: str  # ISO 3166-1 alpha-2
    encoding: str = "UTF-8"
    delimiter: str = ","
    consent_feed: ConsentFeedConfig | None = None
    ignored_columns: tuple[str, ...] = ()  # source columns present in the extract on purpose, not mapped
    schema_drift: str = "fail"  # one of SCHEMA_DRIFT_MODES
    time_zone: str = "UTC"  # IANA zone of the source's timestamps when timestamp_format carries no offset

    @property
    def timestamp_has_zone(self) -> bool:
        """Whether timestamp_format reads a zone or offset from each value (a pattern letter X, x, Z, z, O or V
        outside quoted text), so that time_zone does not apply."""
        return timestamp_format_has_zone(self.timestamp_format)


def timestamp_format_has_zone(pattern: str) -> bool:
    """Whether a Spark datetime pattern has a zone or offset field outside its quoted literals ('T')."""
    return re.search(r"[XxZzOV]", re.sub(r"'[^']*'", "", pattern)) is not None


@dataclass(frozen=True)
class PurposePolicy:
    """Which purposes and lawful bases admit a record, which attributes each purpose covers, what is sensitive."""

    version: str
    unification_purpose: str
    purpose_bases: Mapping[str, tuple[str, ...]]  # purpose -> lawful bases that can justify it
    attribute_purposes: Mapping[str, tuple[str, ...]]  # silver attribute -> purposes that justify holding it
    sensitive: tuple[str, ...]  # canonical columns that never leave bronze
    pseudonymized: tuple[str, ...] = ()  # sensitive columns whose keyed hash silver holds for matching

    @property
    def purposes(self) -> tuple[str, ...]:
        return tuple(self.purpose_bases)

    @property
    def fingerprint(self) -> str:
        """12 hex of the SHA-256 of the policy as loaded: which policy the consent gate applied (audit/consent_runs),
        whatever its `version` says."""
        content = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(content.encode("utf-8")).hexdigest()[:12]

    @property
    def silver_attributes(self) -> tuple[str, ...]:
        """The attributes silver holds: those not derived from a sensitive column, and enabled pseudonyms."""
        return silver_attributes(self.sensitive, self.pseudonymized)

    @property
    def silver_columns(self) -> tuple[str, ...]:
        """Silver's columns: keys plus the columns of every attribute the policy lets silver hold."""
        columns = dict.fromkeys(SILVER_KEY_COLUMNS)
        for attribute in self.silver_attributes:
            columns.update(dict.fromkeys(SILVER_ATTRIBUTES[attribute][1]))
        return tuple(columns)


def silver_attributes(sensitive: tuple[str, ...], pseudonymized: tuple[str, ...]) -> tuple[str, ...]:
    """Silver attributes under a policy: a pseudonym only when its column is pseudonymized, any other
    attribute only when it is derived from no sensitive column."""
    pseudonym_of = {attr: column for column, attr in PSEUDONYM_ATTRIBUTES.items()}
    held = []
    for attr, (derived_from, _) in SILVER_ATTRIBUTES.items():
        if attr in pseudonym_of:
            if pseudonym_of[attr] in pseudonymized:
                held.append(attr)
        elif not set(derived_from) & set(sensitive):
            held.append(attr)
    return tuple(held)


@dataclass(frozen=True)
class LinkageConfig:
    """Splink settings and training plan (conf/splink.yaml)."""

    link_type: str
    unique_id_column: str
    comparisons: tuple[Mapping[str, Any], ...]
    blocking_rules: tuple[tuple[str, ...] | str, ...]
    deterministic_rules: tuple[tuple[str, ...] | str, ...]
    recall: float
    u_max_pairs: int
    seed: int
    em_blocking_rules: tuple[tuple[str, ...] | str, ...]
    em_max_pairs: int  # blocked pairs EM samples per training rule; 0: every one
    match_probability: float
    cluster_probability: float
    # A prediction rule pairs no records of a block (one value of its columns) larger than this; 0: no limit.
    max_block_records: int = 0


SURVIVORSHIP_STRATEGIES: tuple[str, ...] = ("source_priority", "most_recent", "most_frequent", "most_complete")


@dataclass(frozen=True)
class SurvivorshipRule:
    """How one profile attribute (a group of silver columns) picks the record that supplies it."""

    attribute: str
    columns: tuple[str, ...]  # the first is the attribute's value; the others travel with it
    strategy: str
    tie_breakers: tuple[str, ...]

    @property
    def order(self) -> tuple[str, ...]:
        return (self.strategy, *self.tie_breakers)

    @property
    def description(self) -> str:
        """The rule as lineage records it: the strategies in order, then the record id that decides last."""
        return " > ".join((*self.order, "record_id"))


@dataclass(frozen=True)
class SurvivorshipConfig:
    """Golden-profile survivorship (conf/survivorship.yaml)."""

    source_priority: tuple[str, ...]
    rules: tuple[SurvivorshipRule, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for r in self.rules for c in r.columns)


@dataclass(frozen=True)
class SparkConfig:
    """How the one Spark session is built."""

    master: str = "local[*]"
    shuffle_partitions: int = 8  # the most any stage uses (jobs.spark_session.size_stage_to_input)
    rows_per_shuffle_partition: int = 100_000
    small_input_rows: int = 50_000  # a stage with at most this many input rows runs without AQE and codegen
    conf: Mapping[str, str] = field(default_factory=dict)


RESOLVE_ENGINES: tuple[str, ...] = ("spark", "duckdb", "auto")


@dataclass(frozen=True)
class ResolveConfig:
    """Which Splink backend the resolve and train jobs use (conf/pipeline.yaml `resolve`).

    `auto` picks DuckDB, inside the Spark driver, for at most `duckdb_max_records` admitted records on a
    local Spark master, and Spark otherwise.
    """

    engine: str = "auto"
    duckdb_max_records: int = 3_000_000


@dataclass(frozen=True)
class QualityConfig:
    """Bounds the quality gate holds every run to before gold is published (pipeline.yaml `quality`)."""

    max_cluster_size: int = 25  # records in one profile; a larger cluster is an over-merge to inspect
    max_profile_id_churn: float = 0.05  # share of still-present records whose profile id may change in a run
    pandas_max_rows: int = 200_000  # a checked frame this small is validated in pandas, not Spark


@dataclass(frozen=True)
class ConcurrencyConfig:
    """How jobs share one lakehouse (pipeline.yaml `concurrency`): each job holds the lakehouse lock while it
    runs, and a job that cannot take it within lock_timeout_seconds fails rather than writing alongside."""

    lock_timeout_seconds: float = 600.0


GOLD_TABLES: tuple[str, ...] = ("profiles", "profile_sources", "profile_lineage", "profile_permissions")
# What resolve stages beside unify's candidates; the quality gate publishes both sets or neither.
RESOLVED_TABLES: tuple[str, ...] = ("pairwise_matches", "record_profiles", "profile_registry", "identity_events")
PUBLISHED_TABLES: tuple[str, ...] = RESOLVED_TABLES + GOLD_TABLES


@dataclass(frozen=True)
class TablePaths:
    """Every Delta table of the lakehouse, derived from its root."""

    root: Path

    @property
    def bronze(self) -> Path:
        return self.root / "bronze" / "customers"

    @property
    def quarantine(self) -> Path:
        return self.root / "bronze" / "quarantine"

    @property
    def ingest_runs(self) -> Path:
        return self.root / "audit" / "ingest_runs"

    @property
    def silver(self) -> Path:
        return self.root / "silver" / "customers"

    @property
    def consent_ledger(self) -> Path:
        return self.root / "silver" / "consent_ledger"

    @property
    def consent_quarantine(self) -> Path:
        return self.root / "bronze" / "consent_quarantine"

    @property
    def effective_consent(self) -> Path:
        return self.root / "silver" / "effective_consent"

    @property
    def admitted(self) -> Path:
        return self.root / "silver" / "admitted_customers"

    @property
    def consent_audit(self) -> Path:
        return self.root / "audit" / "consent_decisions"

    @property
    def consent_runs(self) -> Path:
        return self.root / "audit" / "consent_runs"

    @property
    def pairwise_matches(self) -> Path:
        return self.root / "gold" / "pairwise_matches"

    @property
    def record_profiles(self) -> Path:
        return self.root / "gold" / "record_profiles"

    @property
    def profile_registry(self) -> Path:
        return self.root / "gold" / "profile_registry"

    @property
    def identity_events(self) -> Path:
        return self.root / "audit" / "identity_events"

    @property
    def profiles(self) -> Path:
        return self.root / "gold" / "profiles"

    @property
    def profile_sources(self) -> Path:
        return self.root / "gold" / "profile_sources"

    @property
    def profile_lineage(self) -> Path:
        return self.root / "gold" / "profile_lineage"

    @property
    def profile_permissions(self) -> Path:
        return self.root / "gold" / "profile_permissions"

    @property
    def unify_runs(self) -> Path:
        return self.root / "audit" / "unify_runs"

    @property
    def erasure_register(self) -> Path:
        return self.root / "audit" / "erasure_register"

    @property
    def staging(self) -> Path:
        """Where resolve and unify write their tables for the quality gate to publish (write-audit-publish)."""
        return self.root / "staging"

    def staged(self, table: str) -> Path:
        """The staged candidate of a published table (PUBLISHED_TABLES)."""
        return self.staging / getattr(self, table).relative_to(self.root)

    def all(self) -> dict[str, Path]:
        """Every table by name (the staging folder is not one)."""
        names = [n for n, v in vars(type(self)).items() if isinstance(v, property) and n != "staging"]
        return {n: getattr(self, n) for n in names}


def names_run(quality: Path, run_id: str) -> bool:
    """Whether the quality results file is run_id's."""
    try:
        return json.loads(quality.read_text(encoding="utf-8")).get("run_id") == run_id
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a job needs: where data lives, the sources, and the Spark settings."""

    conf_dir: Path
    lakehouse: Path
    landing: Path
    ground_truth: Path
    sources: tuple[SourceConfig, ...]
    spark: SparkConfig
    policy: PurposePolicy
    linkage: LinkageConfig
    survivorship: SurvivorshipConfig
    models: Path
    reports: Path
    quality: QualityConfig = field(default_factory=QualityConfig)
    resolve: ResolveConfig = field(default_factory=ResolveConfig)
    concurrency: ConcurrencyConfig = field(default_factory=ConcurrencyConfig)

    @property
    def tables(self) -> TablePaths:
        return TablePaths(self.lakehouse)

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        raise ConfigError([f"sources.yaml: no source named '{name}'"])

    def run_report_dir(self, run_id: str) -> Path:
        """The folder of one run's reports (auditor report, quality results): reports/runs/<safe run id>.

        Airflow run ids hold ':' and '+', which some file systems and URLs mishandle; every character
        outside [A-Za-z0-9._-] becomes '_', and then 8 hex of the run id's SHA-256 follow, as other run ids read
        the same once replaced (`test 1`, `test_1`). A run's folder named before the hash was added (its
        quality.json names the run) stays its folder.
        """
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)
        if not safe.strip("."):
            raise IdresError(f"run id {run_id!r} cannot name a report folder")
        runs = self.reports / "runs"
        if safe == run_id and len(safe) <= MAX_FILE_NAME:
            return runs / safe
        # Airflow allows run ids of 250 characters, and a file name holds 255 bytes: a long one is cut before its hash.
        hashed = runs / f"{safe[: MAX_FILE_NAME - 9]}-{hashlib.sha256(run_id.encode('utf-8')).hexdigest()[:8]}"
        return runs / safe if not hashed.exists() and names_run(runs / safe / "quality.json", run_id) else hashed

    def with_paths(
        self,
        *,
        lakehouse: Path | str | None = None,
        landing: Path | str | None = None,
        ground_truth: Path | str | None = None,
        models: Path | str | None = None,
        reports: Path | str | None = None,
    ) -> PipelineConfig:
        """A copy rooted elsewhere (tests, benchmarks); source paths follow the landing root."""
        new_landing = Path(landing) if landing is not None else self.landing
        sources = tuple(_rebase_source(s, self.landing, new_landing) for s in self.sources)
        return replace(
            self,
            lakehouse=Path(lakehouse) if lakehouse is not None else self.lakehouse,
            landing=new_landing,
            ground_truth=Path(ground_truth) if ground_truth is not None else self.ground_truth,
            models=Path(models) if models is not None else self.models,
            reports=Path(reports) if reports is not None else self.reports,
            sources=sources,
        )

    def rooted_at(self, root: Path | str) -> PipelineConfig:
        """A copy with every data folder under root: lakehouse, landing, truth, models, reports (tests, benchmarks)."""
        root = Path(root)
        return self.with_paths(
            lakehouse=root / "lakehouse",
            landing=root / "landing",
            ground_truth=root / "truth",
            models=root / "models",
            reports=root / "reports",
        )


def _rebase_source(s: SourceConfig, old: Path, new: Path) -> SourceConfig:
    """The source with its extract and consent feed moved from landing zone old to new (unmoved when they match)."""
    if new == old:
        return s

    def moved(path: Path) -> Path:
        if not path.is_relative_to(old):
            raise IdresError(f"source {s.name}: its path is outside the landing zone {old}, so it cannot move to {new}")
        return new / path.relative_to(old)

    feed = s.consent_feed
    if feed is not None:
        feed = replace(feed, path=moved(feed.path))
    return replace(s, path=moved(s.path), consent_feed=feed)


class _Problems:
    """Collects problems so the loader can report all of them in one error."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, file: str, key: str, message: str) -> None:
        self.items.append(f"{file}: {key}: {message}")

    def require(self, file: str, key: str, mapping: Mapping[str, Any], name: str, kind: type) -> Any:
        value = mapping.get(name)
        if value is None:
            self.add(file, f"{key}.{name}" if key else name, "is required")
            return None
        if not isinstance(value, kind):
            # yes/no/on/off/true/false unquoted are YAML booleans: a country code NO, an answer "on"
            quote = " (quote it: YAML reads yes, no, on, off, true and false unquoted as booleans)"
            got = f"got {type(value).__name__}{quote if isinstance(value, bool) and kind is str else ''}"
            self.add(file, f"{key}.{name}" if key else name, f"must be a {kind.__name__}, {got}")
            return None
        if isinstance(value, str) and not value.strip():
            self.add(file, f"{key}.{name}" if key else name, "must not be empty")
            return None
        return value

    def unknown_keys(self, file: str, key: str, mapping: Mapping[str, Any], known: Iterable[str]) -> None:
        """A problem for each key of the mapping the loader does not read (a misspelled key would else be ignored)."""
        for name in sorted(set(mapping) - set(known), key=str):
            self.add(file, f"{key}.{name}" if key else str(name), "is not a known key")


class _RepeatedKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that notes each key a mapping repeats (safe_load silently keeps the last one)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.repeated: list[tuple[int, str]] = []  # (line, key)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    self.repeated.append((key_node.start_mark.line + 1, key_node.value))
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _parse_conf_text(path: Path, text: str, problems: _Problems) -> Any:
    """The document of a conf file; a key repeated within one mapping is a problem (a second `gender:` under
    policy attributes would otherwise silently replace the first's purposes)."""
    repeated: list[tuple[int | None, str]] = []
    if path.suffix == ".json":

        def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = [k for k, _ in pairs]
            repeated.extend((None, k) for k in sorted({k for k in keys if keys.count(k) > 1}))
            return dict(pairs)

        data = json.loads(text, object_pairs_hook=unique)
    else:
        loader = _RepeatedKeyLoader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
        repeated.extend(loader.repeated)
    for line, key in repeated:
        problems.add(
            path.name, f"line {line}" if line else "<file>", f"key '{key}' is repeated (only one may be given)"
        )
    return data


def _read_conf_file(path: Path, problems: _Problems) -> dict[str, Any]:
    """The mapping a YAML file (or, for a .json file, a JSON object) holds; {} with a problem when it does not."""
    if not path.is_file():
        problems.add(path.name, "<file>", f"not found in {path.parent}")
        return {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.add(path.name, "<file>", f"cannot be read ({exc.strerror or type(exc).__name__})")
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        problems.add(path.name, f"line {line}", "not UTF-8 (save the file as UTF-8)")
        return {}
    try:
        data = _parse_conf_text(path, text, problems) or {}
    except json.JSONDecodeError as exc:
        problems.add(path.name, f"line {exc.lineno}", f"invalid JSON ({exc.msg})")
        return {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<file>"
        problems.add(path.name, where, f"invalid YAML ({getattr(exc, 'problem', exc)})")
        return {}
    if not isinstance(data, dict):
        problems.add(path.name, "<file>", "must be a mapping at the top level")
        return {}
    return data


def _resolve(base: Path, value: str, problems: _Problems, file: str, key: str) -> Path:
    """A configured path, with environment variables and ~ expanded, relative to base. A variable that is not set
    is a problem: the path would name a folder `$VAR` and the job read and write there."""
    expanded = os.path.expandvars(value)
    if unset := re.findall(r"\$\{?(\w+)", expanded):
        problems.add(file, key, f"names environment variable(s) that are not set: {', '.join(unset)}")
    p = Path(expanded).expanduser()
    return p if p.is_absolute() else (base / p)


def _string_list(
    file: str, key: str, raw: Any, what: str, problems: _Problems, *, non_empty: bool = False
) -> tuple[str, ...] | None:
    """The strings of a YAML list of `what`; None, noting why, when raw is no list (or an empty one).

    An item that is not a string (a nested list or mapping) is named by its index and dropped, so the
    callers' membership checks see only strings (a list item is unhashable) and still check the rest.
    """
    if not isinstance(raw, list) or (non_empty and not raw):
        problems.add(file, key, f"must be a {'non-empty ' if non_empty else ''}list of {what}")
        return None
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            problems.add(file, f"{key}[{i}]", "must be a string")
    return tuple(item for item in raw if isinstance(item, str))


def _columns(
    file: str, key: str, raw: Any, allowed: tuple[str, ...], required: tuple[str, ...], problems: _Problems
) -> dict[str, str]:
    if not isinstance(raw, dict) or not raw:
        problems.add(file, key, "must be a non-empty mapping of canonical column -> source column")
        return {}
    out: dict[str, str] = {}
    for canonical, source_col in raw.items():
        if canonical not in allowed:
            problems.add(file, f"{key}.{canonical}", f"is not a known column (allowed: {', '.join(allowed)})")
        elif not isinstance(source_col, str) or not source_col:
            problems.add(file, f"{key}.{canonical}", "must name a source column")
        else:
            out[canonical] = source_col
    for req in required:
        if req not in raw:
            problems.add(file, f"{key}.{req}", "is required")
    return out


CONSENT_FEED_COLUMNS: tuple[str, ...] = (
    "source_record_id",
    "purpose",
    "lawful_basis",
    "status",
    "event_time",
    "recorded_at",
    "collection_method",
    "notice_version",
    "expires_at",
    "event_id",
)


def _text_options(file: str, key: str, raw: Mapping[str, Any], fmt: str | None, problems: _Problems) -> tuple[str, str]:
    """A feed's `encoding` (as Java names it; UTF-8 by default, and always for jsonl) and csv `delimiter` (`,` by
    default), each problem reported under `key`."""
    encoding = str(raw.get("encoding", "UTF-8"))
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        problems.add(file, f"{key}.encoding", f"is not a known text encoding, got '{encoding}'")
    else:
        codec = JAVA_CHARSET_NAMES.get(codec, codec)
        if fmt == "jsonl" and codec != "utf-8":
            problems.add(file, f"{key}.encoding", f"must be UTF-8 for jsonl (RFC 8259), got '{encoding}'")
        elif codec not in SPARK_CSV_CHARSETS:
            problems.add(
                file, f"{key}.encoding", f"is not an encoding Spark's CSV reader (Java) knows, got '{encoding}'"
            )
        else:
            encoding = codec
    delimiter = raw.get("delimiter", ",")
    if fmt == "csv" and (not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n'):
        problems.add(
            file, f"{key}.delimiter", f"must be one character other than a quote or line break, got {delimiter!r}"
        )
    return encoding, str(delimiter)


def _load_source(i: int, raw: Any, landing: Path, names: set[str], problems: _Problems) -> SourceConfig | None:
    file, key = "sources.yaml", f"sources[{i}]"
    if not isinstance(raw, dict):
        problems.add(file, key, "must be a mapping")
        return None
    name = problems.require(file, key, raw, "name", str)
    if name is not None:
        key = f"sources[{i}] ({name})"
        if name in names:
            problems.add(file, f"{key}.name", "is used by another source")
        if RECORD_ID_SEPARATOR in name:  # source a's record b:1 and source a:b's record 1 would both be a:b:1
            problems.add(
                file, f"{key}.name", f"must not contain '{RECORD_ID_SEPARATOR}': it ends the name in record ids"
            )
        elif not SOURCE_NAME.fullmatch(name):  # what the subject_requests DAG accepts before the ':' of a record
            problems.add(file, f"{key}.name", "must be letters, digits, '_' or '-' (record ids name it)")
        names.add(name)
    problems.unknown_keys(file, key, raw, SOURCE_KEYS)
    region = problems.require(file, key, raw, "region", str)
    system = problems.require(file, key, raw, "system", str)
    fmt = problems.require(file, key, raw, "format", str)
    if fmt is not None and fmt not in SOURCE_FORMATS:
        problems.add(file, f"{key}.format", f"must be one of {', '.join(SOURCE_FORMATS)}, got '{fmt}'")
    path = problems.require(file, key, raw, "path", str)
    date_format = problems.require(file, key, raw, "date_format", str)
    timestamp_format = problems.require(file, key, raw, "timestamp_format", str)
    country = problems.require(file, key, raw, "default_country", str)
    if country is not None and (not re.fullmatch("[A-Z]{2}", country) or not pycountry.countries.get(alpha_2=country)):
        problems.add(file, f"{key}.default_country", f"must be an ISO 3166-1 alpha-2 code, got '{country}'")
    encoding, delimiter = _text_options(file, key, raw, fmt, problems)
    columns = _columns(file, f"{key}.columns", raw.get("columns"), CANONICAL_COLUMNS, ("source_record_id",), problems)
    feed = None
    raw_feed = raw.get("consent_feed")
    if raw_feed is not None:
        fkey = f"{key}.consent_feed"
        if not isinstance(raw_feed, dict):
            problems.add(file, fkey, "must be a mapping")
        else:
            problems.unknown_keys(file, fkey, raw_feed, ("path", "format", "encoding", "delimiter", "columns"))
            fpath = problems.require(file, fkey, raw_feed, "path", str)
            ffmt = problems.require(file, fkey, raw_feed, "format", str)
            if ffmt is not None and ffmt not in SOURCE_FORMATS:
                problems.add(file, f"{fkey}.format", f"must be one of {', '.join(SOURCE_FORMATS)}")
            fencoding, fdelimiter = _text_options(file, fkey, raw_feed, ffmt, problems)
            fcols = _columns(
                file,
                f"{fkey}.columns",
                raw_feed.get("columns"),
                CONSENT_FEED_COLUMNS,
                ("source_record_id", "purpose", "lawful_basis", "status", "event_time"),
                problems,
            )
            if fpath and ffmt:
                feed = ConsentFeedConfig(
                    path=_resolve(landing, fpath, problems, file, f"{fkey}.path"),
                    format=ffmt,
                    columns=fcols,
                    encoding=fencoding,
                    delimiter=fdelimiter,
                )
    ignored = _ignored_columns(file, key, raw.get("ignored_columns", []), columns, problems)
    drift = raw.get("schema_drift", "fail")
    if drift not in SCHEMA_DRIFT_MODES:
        problems.add(file, f"{key}.schema_drift", f"must be one of {', '.join(SCHEMA_DRIFT_MODES)}, got '{drift}'")
    zone = _time_zone(file, key, raw, timestamp_format, problems)
    if None in (name, region, system, fmt, path, date_format, timestamp_format, country):
        return None
    return SourceConfig(
        name=name,
        region=region,
        system=system,
        format=fmt,
        path=_resolve(landing, path, problems, file, f"{key}.path"),
        columns=columns,
        date_format=date_format,
        timestamp_format=timestamp_format,
        default_country=country,
        encoding=encoding,
        delimiter=delimiter,
        consent_feed=feed,
        ignored_columns=ignored,
        schema_drift=drift if drift in SCHEMA_DRIFT_MODES else "fail",
        time_zone=zone,
    )


@functools.cache
def _iana_zones() -> frozenset[str]:
    """The IANA time zone names this machine's time zone database holds."""
    return frozenset(available_timezones())


def _time_zone(file: str, key: str, raw: Mapping[str, Any], timestamp_format: str | None, problems: _Problems) -> str:
    """A source's `time_zone` (default UTC): an IANA zone name, for a timestamp_format without a zone or offset."""
    zone = raw.get("time_zone", "UTC")
    if not isinstance(zone, str) or zone not in _iana_zones():
        problems.add(file, f"{key}.time_zone", f"is not an IANA time zone name (such as Europe/Kyiv), got '{zone}'")
        return "UTC"
    if "time_zone" in raw and isinstance(timestamp_format, str) and timestamp_format_has_zone(timestamp_format):
        problems.add(
            file,
            f"{key}.time_zone",
            f"applies only to timestamps without an offset; timestamp_format '{timestamp_format}' reads each value's",
        )
    return zone


def _ignored_columns(file: str, key: str, raw: Any, columns: Mapping[str, str], problems: _Problems) -> tuple[str, ...]:
    """A source's `ignored_columns`: names of extract columns that are neither mapped nor drift."""
    if not isinstance(raw, list) or not all(isinstance(c, str) and c for c in raw):
        problems.add(file, f"{key}.ignored_columns", "must be a list of source column names")
        return ()
    for c in raw:
        if c in columns.values():
            problems.add(file, f"{key}.ignored_columns", f"'{c}' is also mapped under columns")
    return tuple(raw)


def _load_policy(raw: dict[str, Any], problems: _Problems) -> PurposePolicy:
    file = "policy.yaml"
    problems.unknown_keys(
        file,
        "",
        raw,
        ("version", "unification_purpose", "purposes", "attributes", "sensitive", "pseudonymized_for_matching"),
    )
    version = problems.require(file, "", raw, "version", str)
    unification = problems.require(file, "", raw, "unification_purpose", str)
    purposes_raw = problems.require(file, "", raw, "purposes", dict) or {}
    purpose_bases: dict[str, tuple[str, ...]] = {}
    for purpose, spec in purposes_raw.items():
        if isinstance(spec, dict):
            problems.unknown_keys(file, f"purposes.{purpose}", spec, ("lawful_bases",))
        bases = _string_list(
            file,
            f"purposes.{purpose}.lawful_bases",
            spec.get("lawful_bases") if isinstance(spec, dict) else None,
            "lawful bases",
            problems,
            non_empty=True,
        )
        if bases is None:
            continue
        for b in bases:
            if b not in LAWFUL_BASES:
                problems.add(
                    file,
                    f"purposes.{purpose}.lawful_bases",
                    f"'{b}' is not a GDPR Art. 6 lawful basis ({', '.join(LAWFUL_BASES)})",
                )
        purpose_bases[purpose] = bases
    if unification is not None and purposes_raw and unification not in purpose_bases:
        problems.add(file, "unification_purpose", f"'{unification}' is not listed under purposes")
    sensitive = _string_list(file, "sensitive", raw.get("sensitive") or [], "canonical columns", problems) or ()
    for col in sensitive:
        if col not in CANONICAL_COLUMNS or col == "source_record_id":
            problems.add(file, f"sensitive.{col}", "is not a canonical attribute column")
    pseudonymized = (
        _string_list(
            file,
            "pseudonymized_for_matching",
            raw.get("pseudonymized_for_matching") or [],
            "sensitive canonical columns",
            problems,
        )
        or ()
    )
    for col in pseudonymized:
        if col not in PSEUDONYM_ATTRIBUTES:
            allowed = ", ".join(PSEUDONYM_ATTRIBUTES)
            problems.add(file, f"pseudonymized_for_matching.{col}", f"has no pseudonym (allowed: {allowed})")
        elif col not in sensitive:
            problems.add(file, f"pseudonymized_for_matching.{col}", "must also be listed under sensitive")
    attributes_raw = problems.require(file, "", raw, "attributes", dict) or {}
    attribute_purposes: dict[str, tuple[str, ...]] = {}
    for attr, purposes_listed in attributes_raw.items():
        if attr not in SILVER_ATTRIBUTES:
            problems.add(file, f"attributes.{attr}", f"is not a silver attribute ({', '.join(SILVER_ATTRIBUTES)})")
            continue
        purposes = _string_list(file, f"attributes.{attr}", purposes_listed, "purposes", problems, non_empty=True)
        if purposes is not None:
            for p in purposes:
                if purposes_raw and p not in purpose_bases:
                    problems.add(file, f"attributes.{attr}", f"purpose '{p}' is not listed under purposes")
            attribute_purposes[attr] = purposes
    for attr in silver_attributes(sensitive, pseudonymized):
        if attr not in attributes_raw:
            problems.add(file, f"attributes.{attr}", "is missing: every silver attribute needs its purposes")
    # A missing version or unification purpose is a problem already; the rest still checks survivorship and EM rules.
    return PurposePolicy(
        version=version or "",
        unification_purpose=unification or "",
        purpose_bases=purpose_bases,
        attribute_purposes=attribute_purposes,
        sensitive=sensitive,
        pseudonymized=pseudonymized,
    )


def _rules(file: str, key: str, raw: Any, problems: _Problems, minimum: int = 1) -> tuple:
    if not isinstance(raw, list) or len(raw) < minimum:
        problems.add(file, key, f"must be a list of at least {minimum} blocking rule(s)")
        return ()
    rules: list[tuple[str, ...] | str] = []
    for i, rule in enumerate(raw):
        if isinstance(rule, str) and rule.strip():
            rules.append(rule)
            for c in unknown_sql_columns(rule, LINKAGE_COLUMNS):
                problems.add(file, f"{key}[{i}]", f"'{c}' is not a linkage column")
        elif isinstance(rule, list) and rule and all(isinstance(c, str) and c.strip() for c in rule):
            rules.append(tuple(rule))
            for c in rule:  # a column name, or a SQL expression (block_on takes both)
                if c.isidentifier() and c not in LINKAGE_COLUMNS:
                    problems.add(file, f"{key}[{i}]", f"'{c}' is not a linkage column")
        else:
            problems.add(file, f"{key}[{i}]", "must be a list of column names or a SQL string")
    return tuple(rules)


@functools.lru_cache(maxsize=256)
def unknown_sql_columns(sql: str, columns: tuple[str, ...], suffixed: bool = False) -> tuple[str, ...]:
    """The columns a Splink SQL blocking rule (`l.x = r.x`) or, suffixed, a comparison level's condition
    (`x_l = x_r`) names that are not among columns, as sqlglot (Splink's SQL parser) reads it; SQL it cannot
    parse is left to Splink to report."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError:
        return ()
    known = {f"{c}_{side}" for c in columns for side in "lr"} if suffixed else set(columns)
    return tuple(dict.fromkeys(c.name for c in tree.find_all(exp.Column) if c.name not in known))


def _splink_creator(module: Any, entry: Mapping[str, Any]) -> Any:
    made = getattr(module, entry["function"])(**entry.get("args", {}))
    return made.configure(**entry["configure"]) if entry.get("configure") else made


def splink_comparison(entry: Mapping[str, Any]) -> Any:
    """The Splink comparison a conf/splink.yaml comparison entry describes: a comparison_library function, or a
    named comparison of comparison_level_library levels."""
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    if "levels" in entry:
        levels = [_splink_creator(cll, level) for level in entry["levels"]]
        return cl.CustomComparison(levels, output_column_name=entry["name"])
    return _splink_creator(cl, entry)


def _check_splink_entry(file: str, key: str, entry: Any, module: Any, problems: _Problems) -> None:
    """A comparison (level): a function of module whose args fit it, and columns Splink is given."""
    if not isinstance(entry, dict) or not isinstance(entry.get("function"), str):
        problems.add(file, key, "must be a mapping with a 'function'")
        return
    problems.unknown_keys(file, key, entry, ("function", "args", "configure"))
    if entry["function"].startswith("_") or not hasattr(module, entry["function"]):
        problems.add(file, f"{key}.function", f"'{entry['function']}' is not in {module.__name__}")
    elif not isinstance(entry.get("args", {}), dict) or not isinstance(entry.get("configure", {}), dict):
        problems.add(file, key, "'args' and 'configure' must be mappings")
    else:
        function, args = entry["function"], entry.get("args", {})
        creator = getattr(module, function)
        _check_keywords(file, f"{key}.args", creator, args, function, problems)
        if entry.get("configure"):
            # configure is a method: None stands in for the comparison (level), which is not made at load time.
            configure = functools.partial(creator.configure, None)
            _check_keywords(file, f"{key}.configure", configure, entry["configure"], f"{function}.configure", problems)
        for name, value in args.items():
            if isinstance(name, str) and name.startswith("col_name") and value not in LINKAGE_COLUMNS:
                problems.add(file, f"{key}.args.{name}", f"'{value}' is not a linkage column")
            elif name == "sql_condition" and isinstance(value, str):
                unknown = unknown_sql_columns(value, LINKAGE_COLUMNS, suffixed=True)
                for c in dict.fromkeys(re.sub(r"_[lr]$", "", c) for c in unknown):
                    problems.add(file, f"{key}.args.{name}", f"'{c}' is not a linkage column")


def _check_keywords(
    file: str, key: str, target: Any, keywords: Mapping[Any, Any], name: str, problems: _Problems
) -> None:
    """A problem under key when keywords cannot be passed to target (the Splink call the YAML spells out), so a
    misspelt or missing argument is named at load time rather than raised by Splink in train or resolve."""
    try:
        inspect.signature(target).bind(**keywords)
    except TypeError as err:
        problems.add(file, key, f"do not fit {name}: {err}")


def _probability(file: str, key: str, value: Any, problems: _Problems) -> float:
    if not isinstance(value, int | float) or not 0 < value < 1:
        problems.add(file, key, "must be a probability strictly between 0 and 1")
        return 0.5
    return float(value)


def _integer(
    file: str,
    section: str,
    raw: Mapping[str, Any],
    key: str,
    default: int,
    minimum: int,
    message: str,
    problems: _Problems,
) -> int:
    """raw[key] (default when absent) if it is an integer (YAML true/false are not) of at least minimum; else
    default, noting why under `section.key`."""
    value = raw.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    problems.add(file, f"{section}.{key}", message)
    return default


def _load_linkage(raw: dict[str, Any], problems: _Problems) -> LinkageConfig | None:
    import splink.comparison_level_library as cll
    import splink.comparison_library as cl

    file = "splink.yaml"
    problems.unknown_keys(
        file,
        "",
        raw,
        (
            "link_type",
            "unique_id_column",
            "comparisons",
            "blocking_rules_to_generate_predictions",
            "training",
            "thresholds",
        ),
    )
    link_type = problems.require(file, "", raw, "link_type", str)
    if link_type is not None and link_type != "dedupe_only":
        # idres resolves all admitted records as one table (across sources and within them): Splink's
        # link_and_dedupe needs a source_dataset column and a table per dataset.
        problems.add(file, "link_type", f"must be dedupe_only (all admitted records as one table), got '{link_type}'")
    unique_id = problems.require(file, "", raw, "unique_id_column", str)
    if unique_id is not None and unique_id != UNIQUE_ID_COLUMN:
        problems.add(
            file,
            "unique_id_column",
            f"must be {UNIQUE_ID_COLUMN}: the pipeline keys records as {UNIQUE_ID_COLUMN} (resolve, profile ids, "
            "expectations)",
        )
    comparisons = problems.require(file, "", raw, "comparisons", list) or []
    output_columns: dict[str, int] = {}
    for i, comp in enumerate(comparisons):
        found = len(problems.items)
        if isinstance(comp, dict) and "levels" in comp:
            problems.unknown_keys(file, f"comparisons[{i}]", comp, ("name", "levels"))
            if not isinstance(comp.get("name"), str):
                problems.add(file, f"comparisons[{i}].name", "is required for a comparison given as levels")
            levels = comp["levels"] if isinstance(comp["levels"], list) else []
            if len(levels) < 2:
                problems.add(file, f"comparisons[{i}].levels", "must list at least two comparison levels")
            for j, level in enumerate(levels):
                _check_splink_entry(file, f"comparisons[{i}].levels[{j}]", level, cll, problems)
        else:
            _check_splink_entry(file, f"comparisons[{i}]", comp, cl, problems)
        if len(problems.items) > found:
            continue
        # What the checks above cannot see: argument values or SQL Splink rejects on either engine (resolve may run
        # on both), and two comparisons whose columns (gamma_<name>, spaces as _, any case) would be one.
        names = set()
        for dialect in ("duckdb", "spark"):
            try:
                names.add(splink_comparison(comp).get_comparison(dialect).output_column_name)
            except Exception as err:  # any failure to make the comparison is a problem of the entry
                message = f"Splink cannot make it for {dialect}: {type(err).__name__}: {err}"
                problems.add(file, f"comparisons[{i}]", message)
                break
        else:
            column = names.pop().replace(" ", "_").casefold()
            if column in output_columns:
                message = f"compares as '{column}', as comparisons[{output_columns[column]}] does; names must differ"
                problems.add(file, f"comparisons[{i}]", message)
            output_columns.setdefault(column, i)
    blocking = _rules(
        file, "blocking_rules_to_generate_predictions", raw.get("blocking_rules_to_generate_predictions"), problems
    )
    training = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    if not training:
        problems.add(file, "training", "is required")
    problems.unknown_keys(
        file,
        "training",
        training,
        ("deterministic_rules", "recall", "u_max_pairs", "seed", "em_blocking_rules", "em_max_pairs"),
    )
    deterministic = _rules(file, "training.deterministic_rules", training.get("deterministic_rules"), problems)
    em_rules = _rules(file, "training.em_blocking_rules", training.get("em_blocking_rules"), problems, minimum=2)
    recall = _probability(file, "training.recall", training.get("recall"), problems)
    u_max_pairs = _integer(
        file,
        "training",
        training,
        "u_max_pairs",
        1_000_000,
        1000,
        "must be an integer of at least 1000",
        problems,
    )
    em_max_pairs = _integer(
        file, "training", training, "em_max_pairs", 0, 0, "must be a non-negative integer (0: every pair)", problems
    )
    seed = _integer(file, "training", training, "seed", 42, 0, "must be a non-negative integer", problems)
    thresholds = raw.get("thresholds") if isinstance(raw.get("thresholds"), dict) else {}
    problems.unknown_keys(
        file, "thresholds", thresholds, ("match_probability", "cluster_probability", "max_block_records")
    )
    match_p = _probability(file, "thresholds.match_probability", thresholds.get("match_probability"), problems)
    cluster_p = _probability(file, "thresholds.cluster_probability", thresholds.get("cluster_probability"), problems)
    if cluster_p < match_p:
        problems.add(file, "thresholds.cluster_probability", "must not be below thresholds.match_probability")
    max_block_message = "must be 0 (no limit) or an integer of at least 2"
    max_block = _integer(file, "thresholds", thresholds, "max_block_records", 0, 0, max_block_message, problems)
    if max_block == 1:
        problems.add(file, "thresholds.max_block_records", max_block_message)
    if link_type is None or unique_id is None:
        return None
    return LinkageConfig(
        link_type=link_type,
        unique_id_column=unique_id,
        comparisons=tuple(comparisons),
        blocking_rules=blocking,
        deterministic_rules=deterministic,
        recall=recall,
        u_max_pairs=u_max_pairs,
        seed=seed,
        em_blocking_rules=em_rules,
        em_max_pairs=em_max_pairs,
        match_probability=match_p,
        cluster_probability=cluster_p,
        max_block_records=max_block,
    )


def _check_em_rules_against_policy(linkage: LinkageConfig, policy: PurposePolicy, problems: _Problems) -> None:
    """An EM training rule on a column silver does not hold under the policy blocks no pair, and Splink's EM fails
    on it: every resolve would fail once a model must be trained. (A deterministic rule on one only finds no
    match, and a prediction rule no candidate.)"""
    held = tuple(c for c in LINKAGE_COLUMNS if c in policy.silver_columns)
    for i, rule in enumerate(linkage.em_blocking_rules):
        named = rule if isinstance(rule, tuple) else unknown_sql_columns(rule, held)
        for c in named:
            if c in LINKAGE_COLUMNS and c not in policy.silver_columns:
                problems.add(
                    "splink.yaml",
                    f"training.em_blocking_rules[{i}]",
                    f"'{c}' is not held in silver under policy.yaml (a sensitive column, or a pseudonym "
                    "pseudonymized_for_matching does not enable): EM would find no pair to train on",
                )


def _load_survivorship(
    raw: dict[str, Any], source_names: set[str], policy: PurposePolicy | None, problems: _Problems
) -> SurvivorshipConfig:
    file = "survivorship.yaml"
    problems.unknown_keys(file, "", raw, ("source_priority", "attributes", "left_out_of_gold"))
    known = {c for _, columns in SILVER_ATTRIBUTES.values() for c in columns}
    # Without a policy (policy.yaml has problems of its own), what silver holds is unknown.
    held = known if policy is None else {c for a in policy.silver_attributes for c in SILVER_ATTRIBUTES[a][1]}
    priority = _string_list(file, "source_priority", raw.get("source_priority") or [], "source names", problems) or ()
    for name in priority:
        if source_names and name not in source_names:
            problems.add(file, "source_priority", f"'{name}' is not a source in sources.yaml")
    for name in sorted({n for n in priority if priority.count(n) > 1}):
        problems.add(file, "source_priority", f"'{name}' is listed more than once: the order would be ambiguous")
    given = problems.require(file, "", raw, "attributes", dict)
    attributes = given or {}
    found = len(problems.items)
    rules: list[SurvivorshipRule] = []
    seen: dict[str, str] = {}
    for attribute, spec in attributes.items():
        key = f"attributes.{attribute}"
        if not isinstance(spec, dict):
            problems.add(file, key, "must be a mapping with a strategy")
            continue
        problems.unknown_keys(file, key, spec, ("columns", "strategy", "tie_breakers"))
        columns = _string_list(
            file, f"{key}.columns", spec.get("columns", [attribute]), "silver columns", problems, non_empty=True
        )
        if columns is None:
            continue
        for c in columns:
            if c not in known:
                problems.add(file, f"{key}.columns", f"'{c}' is not a silver attribute column")
            elif c not in held:
                problems.add(
                    file,
                    f"{key}.columns",
                    f"'{c}' is not held in silver under policy.yaml (derived from a sensitive column, or a "
                    "pseudonym that pseudonymized_for_matching does not enable)",
                )
            elif c in MATCHING_AID_COLUMNS:  # a keyed hash of a national id is for matching, not for analysts
                problems.add(
                    file,
                    f"{key}.columns",
                    f"'{c}' only helps matching (a key, code, flag or pseudonym): no profile value",
                )
            elif c in seen:
                problems.add(file, f"{key}.columns", f"'{c}' is already supplied by attribute '{seen[c]}'")
            else:
                seen[c] = attribute
        strategy = spec.get("strategy")
        tie_breakers = (
            _string_list(file, f"{key}.tie_breakers", spec.get("tie_breakers", []), "strategies", problems) or ()
        )
        for where, s in [("strategy", strategy), *(("tie_breakers", t) for t in tie_breakers)]:
            if s not in SURVIVORSHIP_STRATEGIES:
                problems.add(file, f"{key}.{where}", f"'{s}' is not one of {', '.join(SURVIVORSHIP_STRATEGIES)}")
        rules.append(SurvivorshipRule(attribute, columns, str(strategy), tie_breakers))
    attributes_whole = given is not None and len(problems.items) == found  # an empty mapping too
    left_out = _string_list(file, "left_out_of_gold", raw.get("left_out_of_gold") or [], "columns", problems) or ()
    for c in left_out:
        if c not in held or c in MATCHING_AID_COLUMNS:
            problems.add(file, "left_out_of_gold", f"'{c}' is not a silver column that could be a profile value")
        elif c in seen:
            problems.add(file, "left_out_of_gold", f"'{c}' is supplied by attribute '{seen[c]}'")
    if attributes_whole and policy is not None:
        # A profile column silver holds and survivorship forgets would be dropped from gold without a word.
        for c in sorted(held - set(seen) - set(left_out) - set(MATCHING_AID_COLUMNS)):
            message = f"silver column '{c}' is in no attribute: give it one, or list it in left_out_of_gold"
            problems.add(file, "attributes", message)
    return SurvivorshipConfig(source_priority=priority, rules=tuple(rules))


def _load_quality(raw: Any, problems: _Problems) -> QualityConfig:
    file, default = "pipeline.yaml", QualityConfig()
    if not isinstance(raw, dict):
        problems.add(file, "quality", "must be a mapping")
        return default
    size = _integer(
        file,
        "quality",
        raw,
        "max_cluster_size",
        default.max_cluster_size,
        1,
        "must be a positive integer",
        problems,
    )
    churn = raw.get("max_profile_id_churn", default.max_profile_id_churn)
    if not isinstance(churn, int | float) or isinstance(churn, bool) or not 0 <= churn <= 1:
        problems.add(file, "quality.max_profile_id_churn", "must be a share between 0 and 1")
        churn = default.max_profile_id_churn
    pandas_rows = _integer(
        file,
        "quality",
        raw,
        "pandas_max_rows",
        default.pandas_max_rows,
        0,
        "must be a whole number of rows, 0 or more",
        problems,
    )
    problems.unknown_keys(file, "quality", raw, ("max_cluster_size", "max_profile_id_churn", "pandas_max_rows"))
    return QualityConfig(max_cluster_size=size, max_profile_id_churn=float(churn), pandas_max_rows=pandas_rows)


def _load_resolve(raw: Any, problems: _Problems) -> ResolveConfig:
    file, default = "pipeline.yaml", ResolveConfig()
    if not isinstance(raw, dict):
        problems.add(file, "resolve", "must be a mapping")
        return default
    engine = raw.get("engine", default.engine)
    if engine not in RESOLVE_ENGINES:
        problems.add(file, "resolve.engine", f"must be one of {', '.join(RESOLVE_ENGINES)}, got '{engine}'")
        engine = default.engine
    max_records = _integer(
        file,
        "resolve",
        raw,
        "duckdb_max_records",
        default.duckdb_max_records,
        0,
        "must be a non-negative integer",
        problems,
    )
    problems.unknown_keys(file, "resolve", raw, ("engine", "duckdb_max_records"))
    return ResolveConfig(engine=engine, duckdb_max_records=max_records)


def _load_concurrency(raw: Any, problems: _Problems) -> ConcurrencyConfig:
    file, default = "pipeline.yaml", ConcurrencyConfig()
    if not isinstance(raw, dict):
        problems.add(file, "concurrency", "must be a mapping")
        return default
    timeout = raw.get("lock_timeout_seconds", default.lock_timeout_seconds)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 <= timeout < math.inf:
        problems.add(file, "concurrency.lock_timeout_seconds", "must be a non-negative number of seconds")
        timeout = default.lock_timeout_seconds
    problems.unknown_keys(file, "concurrency", raw, ("lock_timeout_seconds",))
    return ConcurrencyConfig(lock_timeout_seconds=float(timeout))


# Session settings the jobs rely on (spark_session sets them), which a config may repeat but not change: the consent
# gate hashes times formatted in the session's zone into event ids, and ingest reads unzoned source times as UTC.
FIXED_SPARK_PROPERTIES = {
    "spark.sql.session.timeZone": ("UTC", "event ids hash times formatted in it, and unzoned source times are UTC"),
    "spark.sql.variable.substitute": ("false", "SQL quotes ids and run ids, in which ${...} is text"),
    "spark.sql.legacy.javaCharsets": ("true", "sources' encodings are Java's charsets"),
    "spark.sql.parquet.outputTimestampType": ("TIMESTAMP_MICROS", "delta-rs reads the Parquet Spark writes"),
}
# Where a job runs is spark.master (or IDRES_SPARK_MASTER), and under Airflow spark-submit's --master.
MASTER_PROPERTIES = ("spark.master", "spark.submit.deployMode")


def fixed_spark_property(name: str, value: Any) -> str | None:
    """The problem with a Spark property a config sets that idres fixes itself, or None."""
    if name in MASTER_PROPERTIES:
        return "is not set here: the master is pipeline.yaml's spark.master (IDRES_SPARK_MASTER), or Airflow's --master"
    required, reason = FIXED_SPARK_PROPERTIES.get(name, (None, ""))
    if required is not None and str(value).casefold() != required.casefold():
        return f"must be {required} ({reason}), got {value!r}"
    return None


def _spark_submit_conf(conf: Path, session_conf: Mapping[str, Any], problems: _Problems) -> dict[str, str]:
    """conf/spark-submit.json: Spark properties a driver JVM takes at launch (memory, JVM options).

    The DAGs hand them to spark-submit as --conf, since a job cannot change the JVM it runs in; a job that
    starts its own JVM (run directly, tests, benchmarks) sets them with the rest of the session's conf.
    """
    raw = _read_conf_file(conf / SPARK_SUBMIT_CONF_FILE, problems)
    launch: dict[str, str] = {}
    for key, value in raw.items():
        if not key.startswith("spark."):
            problems.add(SPARK_SUBMIT_CONF_FILE, key, "is not a Spark property (spark.*)")
        elif not isinstance(value, str):
            problems.add(SPARK_SUBMIT_CONF_FILE, key, f"must be a string, got {type(value).__name__}")
        elif key in session_conf:
            problems.add(SPARK_SUBMIT_CONF_FILE, key, "is set in pipeline.yaml spark.conf too; set it in one place")
        elif message := fixed_spark_property(key, value):
            problems.add(SPARK_SUBMIT_CONF_FILE, key, message)
        else:
            launch[key] = value
    return launch


def _section(raw: Mapping[str, Any], key: str, problems: _Problems, name: str | None = None) -> dict[str, Any]:
    """pipeline.yaml's mapping under key ({} when absent or left empty); anything else is a problem."""
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add("pipeline.yaml", name or key, f"must be a mapping, got {type(value).__name__}")
        return {}
    return value


def load_config(conf_dir: Path | str | None = None) -> PipelineConfig:
    """Load and check conf/pipeline.yaml, spark-submit.json, sources.yaml, policy.yaml, splink.yaml and
    survivorship.yaml.

    Raises one ConfigError listing every problem. Relative paths are relative to the conf folder's parent
    (the project root for the project's conf/).
    IDRES_LAKEHOUSE, IDRES_LANDING, IDRES_GROUND_TRUTH, IDRES_MODELS and IDRES_REPORTS override the roots,
    IDRES_SPARK_MASTER the Spark master of jobs run directly (under spark-submit, its --master applies).
    """
    conf = Path(conf_dir or os.environ.get("IDRES_CONF") or DEFAULT_CONF_DIR).resolve()
    if not conf.is_dir():  # one problem, not one per file and key it would hold
        raise ConfigError([f"{conf}: no such config folder (--conf, IDRES_CONF)"])
    root = conf.parent
    problems = _Problems()

    pipeline = _read_conf_file(conf / "pipeline.yaml", problems)
    problems.unknown_keys("pipeline.yaml", "", pipeline, ("paths", "spark", "quality", "resolve", "concurrency"))
    paths = _section(pipeline, "paths", problems)
    problems.unknown_keys("pipeline.yaml", "paths", paths, DATA_ROOTS)

    def data_root(key: str, default: str) -> Path:
        """A data folder: IDRES_<KEY> if set, else pipeline.yaml paths.<key>, else the default."""
        value = paths.get(key, default)
        if not isinstance(value, str) or not value.strip():
            problems.add("pipeline.yaml", f"paths.{key}", f"must be a folder path, got {value!r}")
            value = default
        variable = f"IDRES_{key.upper()}"
        where = f"paths.{key} ({variable})" if os.environ.get(variable) else f"paths.{key}"
        return _resolve(root, os.environ.get(variable) or value, problems, "pipeline.yaml", where)

    lakehouse = data_root("lakehouse", "lakehouse")
    landing = data_root("landing", "data/landing")
    ground_truth = data_root("ground_truth", "data/ground_truth")

    spark_raw = _section(pipeline, "spark", problems)
    spark = SparkConfig()
    problems.unknown_keys(
        "pipeline.yaml",
        "spark",
        spark_raw,
        ("master", "shuffle_partitions", "rows_per_shuffle_partition", "small_input_rows", "conf"),
    )
    sizes = {
        key: _integer("pipeline.yaml", "spark", spark_raw, key, getattr(spark, key), minimum, message, problems)
        for key, minimum, message in (
            ("shuffle_partitions", 1, "must be a positive integer"),
            ("rows_per_shuffle_partition", 1, "must be a positive integer"),
            ("small_input_rows", 0, "must be a non-negative integer"),
        )
    }
    extra = _section(spark_raw, "conf", problems, "spark.conf")
    for name, value in extra.items():
        if not isinstance(name, str) or not name.startswith("spark."):
            problems.add("pipeline.yaml", f"spark.conf.{name}", "is not a Spark property (spark.*)")
        elif value is None or isinstance(value, dict | list):
            problems.add("pipeline.yaml", f"spark.conf.{name}", f"must be a value, got {value!r}")
        elif message := fixed_spark_property(name, value):
            problems.add("pipeline.yaml", f"spark.conf.{name}", message)
    master = spark_raw.get("master", spark.master)
    if not isinstance(master, str) or not master.strip():
        problems.add("pipeline.yaml", "spark.master", f"must be a Spark master URL (local[*]), got {master!r}")
        master = SparkConfig().master
    spark = SparkConfig(
        master=os.environ.get("IDRES_SPARK_MASTER") or master,
        **sizes,
        conf={str(k): str(v) for k, v in extra.items()},
    )
    spark = replace(spark, conf={**spark.conf, **_spark_submit_conf(conf, spark.conf, problems)})

    sources_file = _read_conf_file(conf / "sources.yaml", problems)
    problems.unknown_keys("sources.yaml", "", sources_file, ("sources",))
    sources_raw = sources_file.get("sources")
    sources: list[SourceConfig] = []
    if not isinstance(sources_raw, list) or not sources_raw:
        problems.add("sources.yaml", "sources", "must be a non-empty list")
    else:
        names: set[str] = set()
        for i, raw in enumerate(sources_raw):
            src = _load_source(i, raw, landing, names, problems)
            if src is not None:
                sources.append(src)
        if all(isinstance(raw, dict) and raw.get("consent_feed") is None for raw in sources_raw):
            problems.add(
                "sources.yaml",
                "sources",
                "no source has a consent_feed: no record could be admitted (each needs a lawful basis on record)",
            )

    policy = _load_policy(_read_conf_file(conf / "policy.yaml", problems), problems)
    linkage = _load_linkage(_read_conf_file(conf / "splink.yaml", problems), problems)
    survivorship = _load_survivorship(
        _read_conf_file(conf / "survivorship.yaml", problems),
        {
            r["name"]
            for r in (sources_raw if isinstance(sources_raw, list) else [])
            if isinstance(r, dict) and isinstance(r.get("name"), str)
        },
        policy,
        problems,
    )
    if linkage is not None and policy is not None:
        _check_em_rules_against_policy(linkage, policy, problems)
    models = data_root("models", "models")
    reports = data_root("reports", "reports")
    quality = _load_quality(_section(pipeline, "quality", problems), problems)
    resolve = _load_resolve(_section(pipeline, "resolve", problems), problems)
    concurrency = _load_concurrency(_section(pipeline, "concurrency", problems), problems)

    if problems.items:
        raise ConfigError(problems.items)
    return PipelineConfig(
        conf_dir=conf,
        lakehouse=lakehouse,
        landing=landing,
        ground_truth=ground_truth,
        sources=tuple(sources),
        spark=spark,
        policy=policy,
        linkage=linkage,
        survivorship=survivorship,
        models=models,
        reports=reports,
        quality=quality,
        resolve=resolve,
        concurrency=concurrency,
    )
