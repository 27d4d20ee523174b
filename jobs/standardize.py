"""Standardize: bronze -> silver. Comparable names, emails, phones, dates, addresses and countries.

Standards and libraries:
- names: Unicode NFKC (UAX #15) + casefold; Cyrillic romanized with Ukraine's national system
  (KMU 2010, `translitua`), other scripts folded to ASCII with `anyascii`; a convention-tolerant
  key folds the differences between romanization systems; Metaphone (`jellyfish`) for sound-alikes;
- emails: RFC 5322 / 6531 syntax via `email-validator` (no DNS look-ups), lowercased;
- phones: E.164 via `phonenumbers` (libphonenumber), parsed with the record's or source's country;
- dates: ISO 8601 (Spark DateType);
- countries: ISO 3166-1 alpha-2 via `pycountry`, CLDR names via `babel`, other English names via
  `country_converter`;
- postcodes: upper-case alphanumerics; streets and cities: NFKC, casefold, romanized, punctuation
  stripped. (libpostal would parse addresses better, but needs model data this build cannot fetch.)

Sensitive canonical columns named by the purpose policy are never selected into silver. One the
policy lists under `pseudonymized_for_matching` reaches silver only as a keyed hash (HMAC-SHA256,
RFC 2104) of its normalized value, which Splink can compare for equality; the key comes from
IDRES_PSEUDONYM_KEY (a development default otherwise, with a warning).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache

import country_converter
import jellyfish
import pandas as pd
import phonenumbers
import pycountry
import translitua
from anyascii import anyascii
from babel import Locale, UnknownLocaleError
from babel.core import get_global
from babel.languages import get_official_languages
from email_validator import EmailNotValidError, validate_email
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import delta_io
from jobs.canonical import E164, PSEUDONYM_ATTRIBUTES, lookup, ranked_versions, trimmed
from jobs.config import PipelineConfig, PurposePolicy, SourceConfig
from jobs.runner import run_job
from jobs.spark_session import size_stage_to_input

log = logging.getLogger("idres.standardize")
# country_converter logs each name it does not find, and a country field may hold anything a customer typed.
logging.getLogger("country_converter").setLevel(logging.ERROR)

# Honorifics that precede names in the source systems' languages (matched after casefolding).
TITLES = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "miss",
        "dr",
        "prof",
        "sir",
        "herr",
        "frau",
        "hr",
        "fr",
        "domnul",
        "doamna",
        "domnișoara",
        "dl",
        "dna",
        "d-l",
        "d-na",
        "d-ra",
        "d-șoara",
        "пан",
        "пані",
        "г-н",
        "г-жа",
        "д-р",
        "гн",
        "проф",
        "др",
    }
)
# Romanian legacy cedilla letters -> the comma-below letters of the Romanian standard (SR 13011).
ROMANIAN_COMMA_BELOW = str.maketrans({"ş": "ș", "ţ": "ț", "Ş": "Ș", "Ţ": "Ț"})
CYRILLIC = re.compile(r"[\u0400-\u04ff]")
# Latin letters and the Cyrillic letters that look the same (in the same case), typed into a word of the other
# script by keyboard-layout slips or OCR. A word's look-alikes are read in its script (_one_script).
LATIN_CYRILLIC_LOOKALIKES = {
    **dict(zip("ABCEHIKMOPTXY", "АВСЕНІКМОРТХУ", strict=True)),
    **dict(zip("aceiopxy", "асеіорху", strict=True)),
}
TO_CYRILLIC = str.maketrans(LATIN_CYRILLIC_LOOKALIKES)
TO_LATIN = str.maketrans({cyrillic: latin for latin, cyrillic in LATIN_CYRILLIC_LOOKALIKES.items()})
LETTER_RUN = re.compile(r"[^\W\d_]+")
# Apostrophes as typed (the Ukrainian one as ' ’ ʼ ‘ ʻ or `) belong to the word: Мар’яна is Мар'яна, O’Neil O'Neil.
APOSTROPHES = "'\u2019\u02bc\u2018\u02bb`"
# Typed for one too: the acute accent (NFKC makes it a space and a combining mark), the primes ′ and ʹ.
APOSTROPHE_STAND_INS = str.maketrans(dict.fromkeys("\u00b4\u2032\u02b9", "'"))
# Vulgar fractions (½, ⅓) apart from the digits before them: NFKC makes 12½ "121⁄2", another number than 12 1/2.
FRACTIONS_APART = str.maketrans(
    {ch: " " + ch for ch in map(chr, range(0x3000)) if unicodedata.decomposition(ch).startswith("<fraction>")}
)
E164_PHONE = re.compile(E164)

# Romanization systems disagree on a few letters: fold each group to one spelling. Consonant
# clusters first (щ shch/schtsch/shh, ш sh/sch/š, ч ch/tsch/tch/č, ц ts/tz/c/z, ж zh/ž,
# з z/s (German), х kh/h (German ch folds with ч), г h/g, w/v), then the semivowels y/j -> i (я ya/ia/ja, ю yu/iu/ju,
# й/и/і), then ie/ye/je -> e, the German spellings of umlauts without them (ue/ü, oe/ö, ae/ä: Mueller ~ Müller
# ~ Muller), and finally doubled letters collapse (mariia ~ mariya ~ maria).
CONSONANT_FOLDS: tuple[tuple[str, str], ...] = (
    ("schtsch", "s"),
    ("shch", "s"),
    ("shh", "s"),
    ("tsch", "c"),
    ("sch", "s"),
    ("tch", "c"),
    ("sh", "s"),
    ("zh", "z"),
    ("kh", "h"),
    ("ch", "c"),
    ("ts", "c"),
    ("tz", "c"),
    ("cz", "c"),
    ("ck", "k"),
    ("w", "v"),
    ("g", "h"),
    ("x", "ks"),
    ("q", "k"),
    ("z", "s"),
)
VOWEL_FOLDS: tuple[tuple[str, str], ...] = (
    ("y", "i"),
    ("j", "i"),
    ("ie", "e"),
    ("ou", "u"),
    ("ue", "u"),
    ("oe", "o"),
    ("ae", "a"),
)
# Development key for pseudonyms; set IDRES_PSEUDONYM_KEY (a secret) anywhere real data is processed.
# Changing the key changes every pseudonym: retrain and re-resolve afterwards.
DEV_PSEUDONYM_KEY = "idres-development-pseudonym-key"
# Genders as the sources write them (lower-cased, without a closing full stop: жін., Fem.), in their languages.
GENDERS = {
    **dict.fromkeys(("f", "female", "fem", "w", "weiblich", "feminin", "ж", "жін", "жіноча", "жен", "женский"), "F"),
    **dict.fromkeys(("m", "male", "masc", "männlich", "masculin", "ч", "м", "чол", "чоловіча", "муж", "мужской"), "M"),
}


def clean_text(raw: str | None) -> str | None:
    """NFKC (vulgar fractions kept apart from the number before them), look-alike letters in their word's script,
    casefold, legacy letters fixed, apostrophes, invisible format characters and leftover combining marks (a stress
    mark) dropped, punctuation and symbols to spaces, whitespace collapsed."""
    if raw is None:
        return None
    text = raw.translate(APOSTROPHE_STAND_INS).translate(FRACTIONS_APART)
    text = LETTER_RUN.sub(_one_script, unicodedata.normalize("NFKC", text))
    text = text.translate(ROMANIAN_COMMA_BELOW).casefold()
    text = "".join(map(_in_clean_text, text))
    text = " ".join(text.split())
    return text or None


def _one_script(word: re.Match[str]) -> str:
    """A word (a run of letters) with its Latin/Cyrillic look-alikes in its script: the one whose own letters (those
    with no look-alike) it holds, when it holds one script's only (Cepгiй with a Latin C, e, p and i is Сергій),
    else the script most of its letters use (Bасиль with a Latin B is Василь; Niсolae with a Cyrillic с is
    Nicolae); a tie leaves it as written."""
    text = word.group()
    cyrillic = len(CYRILLIC.findall(text))
    if cyrillic in (0, len(text)):  # one script (or none of the two): nothing to read otherwise
        return text
    is_latin = [unicodedata.name(ch, "").startswith("LATIN") for ch in text]
    own_cyrillic = any(CYRILLIC.match(ch) and ord(ch) not in TO_LATIN for ch in text)
    own_latin = any(latin and ord(ch) not in TO_CYRILLIC for ch, latin in zip(text, is_latin, strict=True))
    if own_cyrillic != own_latin:
        return text.translate(TO_CYRILLIC if own_cyrillic else TO_LATIN)
    latin = sum(is_latin)
    if latin and cyrillic != latin:
        return text.translate(TO_CYRILLIC if cyrillic > latin else TO_LATIN)
    return text


@lru_cache(maxsize=4096)
def _in_clean_text(ch: str) -> str:
    """What clean_text makes of one character. Dropped: apostrophes, and what NFKC leaves that shows nothing of its
    own, format characters (soft hyphen, zero-width space and joiner; Cf) and the script-neutral diacritics no
    letter absorbed (a stress mark; a script's own vowel signs and points stay). A space: other punctuation,
    symbols, separators and control characters."""
    category = unicodedata.category(ch)
    if ch in APOSTROPHES or category == "Cf" or unicodedata.name(ch, "").startswith("COMBINING"):
        return ""
    return " " if category[0] in "PSZC" else ch


def to_latin(text: str | None, keep_digits: bool = False) -> str | None:
    """Romanize: Cyrillic by Ukraine's KMU 2010 system, everything else to ASCII; lower-case letters
    (and digits, for addresses) only."""
    if text is None:
        return None
    # щ in scholarly romanization (šč) before anyascii, which would leave an ordinary "sc".
    text = text.replace("šč", "shch")
    latin = translitua.translit(text) if CYRILLIC.search(text) else text
    latin = anyascii(latin).lower()
    latin = " ".join(re.sub(r"[^a-z0-9 ]+" if keep_digits else r"[^a-z ]+", "", latin).split())
    return latin or None


def fold_key(latin: str | None) -> str | None:
    """A key on which one name agrees across romanization conventions (Shevchenko ~ Schewtschenko ~ Sevcenko)."""
    if latin is None:
        return None
    key = latin.replace(" ", "")
    for src, dst in CONSONANT_FOLDS + VOWEL_FOLDS:
        key = key.replace(src, dst)
    key = re.sub(r"(.)\1+", r"\1", key)
    return key or None


def is_title(word: str) -> bool:
    """Whether a word as written is an honorific of TITLES, in any case, with or without its full stop, whatever
    its dash (г‑н with a non-breaking hyphen), and read with its Latin/Cyrillic look-alikes in either script
    (Пані typed with a Latin a; Мr. with a Cyrillic М, whose two letters leave no script the most used)."""
    folded = "".join("-" if unicodedata.category(ch) == "Pd" else ch for ch in unicodedata.normalize("NFKC", word))
    readings = (folded, folded.translate(TO_LATIN), folded.translate(TO_CYRILLIC))  # look-alikes keep their case
    return any(r.translate(ROMANIAN_COMMA_BELOW).casefold().strip(".") in TITLES for r in readings)


@lru_cache(maxsize=200_000)
def standardize_name(raw: str | None) -> tuple[str | None, str | None, str | None, str | None]:
    """(native, latin, key, phonetic) of one name; titles dropped. Null in, nulls out."""
    # Titles are looked for before clean_text makes the hyphen of г-н or д-р a space, and so that of a
    # double-barrelled Herr-Schmidt, whose first part is no title.
    native = clean_text(" ".join(_without_leading_titles(name_words(raw), is_title))) if raw is not None else None
    latin = to_latin(native)
    key = fold_key(latin)
    return native, latin, key, (jellyfish.metaphone(key) or None) if key else None


def name_words(raw: str) -> list[str]:
    """The words of a name as clean_text splits them (at spaces, punctuation and symbols: Mr.John, «Пан», Dr./Prof.,
    Mr．John), but for dashes, which stay in their word (г-н, Herr-Schmidt)."""
    text = unicodedata.normalize("NFKC", raw.translate(APOSTROPHE_STAND_INS))
    marked = "".join("\n" if _in_clean_text(ch) == " " and unicodedata.category(ch) != "Pd" else ch for ch in text)
    return [word for word in marked.split("\n") if word.strip()]


def _without_leading_titles(words: list[str], title: Callable[[str], bool]) -> list[str]:
    """The words after the titles that open them: a title precedes a name, so one that is the last word left is
    the name (Herr, Пан and Sir are surnames too), and one after the name is part of it."""
    start = 0
    while start < len(words) - 1 and title(words[start]):
        start += 1
    return words[start:]


@lru_cache(maxsize=200_000)
def standardize_email(raw: str | None) -> tuple[str | None, bool | None]:
    """(lower-cased address, is it syntactically valid). An invalid address becomes null, as an invalid phone
    does: shared junk such as "n/a" must not match records, and the raw value stays in bronze."""
    if raw is None or not raw.strip():
        return None, None
    try:
        return validate_email(raw.strip().lower(), check_deliverability=False).normalized.lower(), True
    except EmailNotValidError:
        return None, False


def _written_with_country_code(raw: str, country: str | None) -> phonenumbers.PhoneNumber | None:
    """The number read as international when it is written with its country's calling code but no + or 00, and
    that reading is valid: 49 151 23456789 in Germany. Only in a country whose national numbers are written
    after a trunk prefix (Germany's 0): there, digits opening with the calling code instead cannot be a whole
    national number, yet libphonenumber reads them as one wherever that is valid too (German numbers vary in
    length), making it +49 49 151... Italy and Poland write no trunk prefix, and 39 or 48 may open a number."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(country) if country else None
    trunk = metadata.national_prefix if metadata is not None else None
    first = re.search(r"[+\uff0b\d]", raw)  # full-width plus and digits of any script, as libphonenumber reads
    digits = phonenumbers.normalize_digits_only(raw)
    code = str(metadata.country_code) if metadata is not None else ""
    if (
        not trunk
        or first is None
        or not first.group().isdigit()
        or digits.startswith(trunk)
        or not digits.startswith(code)
    ):
        return None
    try:
        international = phonenumbers.parse("+" + raw[first.start() :], None)
    except phonenumbers.NumberParseException:
        return None
    return international if phonenumbers.is_valid_number(international) else None


# Ukraine's former long-distance prefix, 8, still written before a number's 0: 8 067 123 45 67.
OLD_UA_LONG_DISTANCE = re.compile(r"80\d{9}")


@lru_cache(maxsize=200_000)
def standardize_phone(raw: str | None, country: str | None) -> str | None:
    """E.164, or None when the number is not a valid number for its country or does not fit E.164's 7-15 digits
    (canonical.E164, which the silver suite checks)."""
    if raw is None or not raw.strip():
        return None
    if country == "UA" and "+" not in raw and OLD_UA_LONG_DISTANCE.fullmatch(phonenumbers.normalize_digits_only(raw)):
        raw = raw[re.search(r"\d", raw).end() :]  # the 8 dropped: 8 (067) 123-45-67 is 067 123 45 67
    try:
        parsed = _written_with_country_code(raw, country) or phonenumbers.parse(raw, country)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return e164 if E164_PHONE.fullmatch(e164) else None


@lru_cache(maxsize=10_000)
def standardize_country(raw: str | None, languages: tuple[str, ...] = ("en",)) -> str | None:
    """ISO 3166-1 alpha-2 from a code or a name: the codes and English names `pycountry` knows, else a
    country's name in one of `languages` (Romanian ones with ş and ţ written as CLDR's ș and ț) or a code CLDR
    keeps as an alias (country_names) or the EU's own code (EL), else a name in common English use that
    `country_converter` reads (Turkey, Great Britain, The Netherlands, Ivory Coast); None when unknown or when it
    reads two countries."""
    if raw is None or not raw.strip():
        return None
    try:
        return pycountry.countries.lookup(raw.strip()).alpha_2
    except LookupError:
        name = " ".join(unicodedata.normalize("NFKC", raw).translate(ROMANIAN_COMMA_BELOW).casefold().split())
        return EU_COUNTRY_CODES.get(name) or country_names(languages).get(name) or common_english_country(name)


# The codes the EU's institutions write where ISO 3166 differs (Interinstitutional Style Guide; UK is CLDR's alias).
EU_COUNTRY_CODES = {"el": "GR"}
# "United Kingdom of Great Britain and Northern Ireland" with room to spare
LONGEST_COUNTRY_NAME = 80


@lru_cache(maxsize=1)
def _country_converter() -> country_converter.CountryConverter:
    return country_converter.CountryConverter()


def common_english_country(name: str) -> str | None:
    """ISO 3166-1 alpha-2 of a country name in common English use that neither ISO 3166 nor CLDR lists, through
    `country_converter`'s regular expressions; None when they match no country or more than one."""
    if len(name) > LONGEST_COUNTRY_NAME:  # each of its 250 patterns would search the whole text
        return None
    code = _country_converter().convert(name, src="regex", to="ISO2", not_found=None)
    # not found gives the name back (no code: a code was found by pycountry), more than one match a list
    return code if isinstance(code, str) and pycountry.countries.get(alpha_2=code) else None


@lru_cache(maxsize=16)
def country_names(languages: tuple[str, ...]) -> dict[str, str]:
    """Casefolded country names in the given languages (CLDR, through `babel`: Україна, România, Deutschland,
    Russia) and CLDR's alias codes of one country (UK for GB), each to its ISO 3166-1 alpha-2 code."""
    names = {
        alias.casefold(): codes[0]
        for alias, codes in get_global("territory_aliases").items()
        if len(codes) == 1 and alias.isalpha() and pycountry.countries.get(alpha_2=codes[0])
    }
    for language in languages:
        try:
            territories = Locale.parse(language).territories
        except (UnknownLocaleError, ValueError):
            continue
        for code, name in territories.items():
            if pycountry.countries.get(alpha_2=code):  # not regions (EU, 001) nor unknown codes
                names.setdefault(" ".join(name.casefold().split()), code)
    return names


def country_languages(countries: Iterable[str]) -> tuple[str, ...]:
    """English and the official languages of the given countries: the languages the sources name countries in."""
    official = {language for country in countries for language in get_official_languages(country)}
    return ("en", *sorted(official - {"en"}))


def pseudonym_key() -> bytes:
    """The HMAC key for pseudonyms: IDRES_PSEUDONYM_KEY, or the development default (with a warning)."""
    key = os.environ.get("IDRES_PSEUDONYM_KEY")
    if not key:
        log.warning("IDRES_PSEUDONYM_KEY is not set: pseudonyms use the development key")
        key = DEV_PSEUDONYM_KEY
    return key.encode("utf-8")


def pseudonymize_identifier(raw: str | None, key: bytes) -> str | None:
    """HMAC-SHA256 (hex) of an identifier's digits, so formatting and labels (ІПН, №) do not matter; None when it
    has no digit, or only one digit repeated (a placeholder such as 000-000-00-00 would link everyone who has it)."""
    digits = re.sub(r"[^0-9]", "", unicodedata.normalize("NFKC", raw)) if raw else ""
    return hmac.new(key, digits.encode("ascii"), hashlib.sha256).hexdigest() if len(set(digits)) > 1 else None


NAME_SCHEMA = T.StructType([T.StructField(f, T.StringType()) for f in ("native", "latin", "key", "phonetic")])
EMAIL_SCHEMA = T.StructType([T.StructField("email", T.StringType()), T.StructField("valid", T.BooleanType())])


@F.pandas_udf(NAME_SCHEMA)
def _name_udf(names: pd.Series) -> pd.DataFrame:
    return pd.DataFrame([standardize_name(n) for n in names], columns=["native", "latin", "key", "phonetic"])


@F.pandas_udf(EMAIL_SCHEMA)
def _email_udf(emails: pd.Series) -> pd.DataFrame:
    return pd.DataFrame([standardize_email(e) for e in emails], columns=["email", "valid"])


@F.pandas_udf(T.StringType())
def _phone_udf(phones: pd.Series, countries: pd.Series) -> pd.Series:
    return pd.Series([standardize_phone(p, c) for p, c in zip(phones, countries, strict=True)], dtype=object)


@F.pandas_udf(T.StringType())
def _latin_address_udf(texts: pd.Series) -> pd.Series:
    return pd.Series([to_latin(clean_text(t), keep_digits=True) for t in texts], dtype=object)


# Words for a locality's kind that open a city as the sources write it (м. Київ, смт Ворзель, Mun. București,
# Orașul Voluntari, Stadt Köln), as keys (fold_key), so that any romanization of them is one: selyshche,
# selischtsche and selišče alike. Dropped, the city compares by its name. Not Sat or Markt, which open the names
# of places too (Sat Nou, Markt Schwaben), nor сел., whose key is Zell's (Zell am See).
LOCALITY_DESIGNATOR_KEYS = frozenset(
    fold_key(word)
    for word in (
        *("m", "misto", "s", "selo", "smt", "selyshche", "g", "gorod", "pgt", "poselok"),
        *("mun", "municipiul", "municipiu", "oras", "orasul", "com", "comuna", "stadt", "gemeinde"),
    )
)


def city_name(text: str | None) -> str | None:
    """A city romanized and folded (as a street is), without a locality designator before its name."""
    latin = to_latin(clean_text(text), keep_digits=True)
    first, _, name = (latin or "").partition(" ")
    return name if name and fold_key(first) in LOCALITY_DESIGNATOR_KEYS else latin


@F.pandas_udf(T.StringType())
def _city_udf(texts: pd.Series) -> pd.Series:
    return pd.Series([city_name(t) for t in texts], dtype=object)


def latest_bronze_records(bronze: DataFrame) -> DataFrame:
    """The current version of each source record (canonical.ranked_versions), its updated_at as the choice read it."""
    return bronze.transform(ranked_versions).where("version_rank = 1").drop("version_rank")


def standardize_names(df: DataFrame) -> DataFrame:
    """Native, Latin, key (and, for the last name, phonetic) forms of each name."""
    out = df
    for name in ("first_name", "middle_name", "last_name"):
        out = out.withColumn(f"_{name}_parts", _name_udf(F.col(name)))
        out = out.withColumn(f"{name}_native", F.col(f"_{name}_parts.native"))
    return (
        out.withColumn("first_name", F.col("_first_name_parts.latin"))
        .withColumn("first_name_key", F.col("_first_name_parts.key"))
        .withColumn("middle_name", F.col("_middle_name_parts.latin"))
        .withColumn("last_name", F.col("_last_name_parts.latin"))
        .withColumn("last_name_key", F.col("_last_name_parts.key"))
        .withColumn("last_name_phonetic", F.col("_last_name_parts.phonetic"))
        .drop("_first_name_parts", "_middle_name_parts", "_last_name_parts")
    )


def source_default_country(default_countries: Mapping[str, str]) -> Column:
    """The default country (ISO 3166 alpha-2) of each row's source_system."""
    return lookup(default_countries)[F.col("source_system")]


def standardize_country_column(df: DataFrame, default_countries: Mapping[str, str]) -> DataFrame:
    """ISO 3166 alpha-2 country, from codes and from names in English and the sources' countries' languages
    (standardize_country); a record without one takes its source's default country."""
    languages = country_languages(default_countries.values())

    @F.pandas_udf(T.StringType())
    def country(values: pd.Series) -> pd.Series:
        return pd.Series([standardize_country(v, languages) for v in values], dtype=object)

    return df.withColumn(
        "country",
        F.when(F.col("country").isNull(), source_default_country(default_countries)).otherwise(
            country(F.col("country"))
        ),
    )


def standardize_contacts(df: DataFrame, default_countries: Mapping[str, str]) -> DataFrame:
    """Lower-cased, validated email; E.164 phone parsed with the record's standardized country, or its source's
    default when that country is unknown (standardize_country makes a name it does not know null). A number not
    valid for the record's country is null, not tried elsewhere: nearly any digits make a valid German number."""
    email = _email_udf(F.col("email"))
    region = F.coalesce(F.col("country"), source_default_country(default_countries))
    return (
        df.withColumn("_email", email)
        .withColumn("email", F.col("_email.email"))
        .withColumn("email_valid", F.col("_email.valid"))
        .withColumn("phone", _phone_udf(F.col("phone"), region))
        .withColumn("marketing_email", F.when(F.col("email_valid"), F.col("email")))
        .withColumn("marketing_phone", F.col("phone"))
        .drop("_email")
    )


def standardize_address(df: DataFrame) -> DataFrame:
    """Romanized, folded street and city (without a designator such as м. or Mun.); postcode as upper-case
    alphanumerics."""
    return (
        df.withColumn("street", _latin_address_udf(F.col("street")))
        .withColumn("city", _city_udf(F.col("city")))
        .withColumn("postcode", F.nullif(F.regexp_replace(F.upper(F.col("postcode")), r"[^0-9A-Z]", ""), F.lit("")))
    )


def standardize_gender(df: DataFrame) -> DataFrame:
    """F or M (or null) from the sources' many spellings. The full stop is sought only where a run of spaces
    begins: sought at every space of a long run, it took time quadratic in the run's length."""
    mapping = lookup(GENDERS)
    return df.withColumn("gender", mapping[F.regexp_replace(F.lower(trimmed("gender")), r"(?<!\s)\s*\.$", "")])


def pseudonymize(df: DataFrame, policy: PurposePolicy) -> DataFrame:
    """A keyed hash column for each column the policy pseudonymizes for matching (none by default)."""
    if not policy.pseudonymized:
        return df
    key = pseudonym_key()

    @F.pandas_udf(T.StringType())
    def hashed(values: pd.Series) -> pd.Series:
        return pd.Series([pseudonymize_identifier(v, key) for v in values], dtype=object)

    for column in policy.pseudonymized:
        df = df.withColumn(PSEUDONYM_ATTRIBUTES[column], hashed(F.col(column)))
    return df


def standardize(bronze: DataFrame, sources: Sequence[SourceConfig], policy: PurposePolicy) -> DataFrame:
    """Bronze rows -> silver rows: the current version of each record, standardized, minimized."""
    default_countries = {s.name: s.default_country for s in sources}
    return (
        bronze.transform(latest_bronze_records)
        .transform(standardize_names)
        .transform(standardize_country_column, default_countries)
        .transform(standardize_contacts, default_countries)
        .transform(standardize_address)
        .transform(standardize_gender)
        .transform(pseudonymize, policy)
        .select(*policy.silver_columns)
    )


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> dict[str, int]:
    """Rebuild silver from bronze; unchanged records are not rewritten and a rerun commits nothing."""
    delta_io.require_table(cfg.tables.bronze, "ingest")
    size_stage_to_input(spark, cfg.spark, delta_io.row_count(cfg.tables.bronze))
    silver = standardize(delta_io.read_delta(spark, cfg.tables.bronze), cfg.sources, cfg.policy)
    metrics = delta_io.merge_delta(
        silver,
        cfg.tables.silver,
        keys=("source_system", "source_record_id"),
        run_id=run_id,
        job="standardize",
        update_changed=True,
        delete_missing=True,
        schema_follows_source=True,  # a column the policy no longer lets silver hold leaves it
    )
    counts = {
        k.removeprefix("num_target_rows_"): int(v) for k, v in metrics.items() if k.startswith("num_target_rows_")
    }
    log.info("standardize: silver %s", counts)
    return counts


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    return run_job("standardize", run, argv)


if __name__ == "__main__":
    # Call through the package module, so Spark pickles its functions by reference, not as __main__'s.
    from jobs.standardize import main as job_main

    job_main()
