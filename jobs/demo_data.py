"""Deterministic demo data: the same people scattered over three regional source systems.

Each region is simulated as the external system it is, with its own layout, file format, date
format and script: a Ukrainian CRM (CSV, Cyrillic, dd.mm.yyyy), a Romanian web shop (JSON lines,
diacritics) and an EU loyalty programme (Parquet, Latin). People recur across regions and within
one, with realistic noise. Consent event feeds are written per region, and the ground truth
(record -> person) is written apart from the landing zone: the pipeline never reads it.

    python -m jobs.demo_data --people 2000 --seed 42 [--corrupt]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import sys
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import iuliia
import phonenumbers
import pyarrow as pa
import pyarrow.parquet as pq
import translitua
from anyascii import anyascii
from faker import Faker

from jobs import delta_io
from jobs.config import PipelineConfig, load_config
from jobs.errors import IdresError
from jobs.files import draft_of, replace_durably, write_whole
from jobs.runner import lakehouse_lock

KYIV = ZoneInfo("Europe/Kyiv")

# In each folder the generator writes to: the name of each file it wrote there, and its SHA-256 (write_demo_files).
DEMO_FILES_MANIFEST = ".idres-demo-files.json"
TRUTH_FILE = "records.csv"  # in the ground-truth folder: source_system, source_record_id, person_id

ORIGINS: dict[str, dict] = {
    # origin: faker locale, home country, share of the population, presence probability per source
    "ua": {
        "locale": "uk_UA",
        "country": "UA",
        "share": 0.30,
        "presence": {"ua_crm": 0.95, "eu_loyalty": 0.45, "ro_shop": 0.12},
    },
    "ru": {
        "locale": "ru_RU",
        "country": "UA",
        "share": 0.10,
        "presence": {"ua_crm": 0.95, "eu_loyalty": 0.35, "ro_shop": 0.05},
    },
    "ro": {
        "locale": "ro_RO",
        "country": "RO",
        "share": 0.30,
        "presence": {"ro_shop": 0.95, "eu_loyalty": 0.45, "ua_crm": 0.03},
    },
    "gb": {"locale": "en_GB", "country": "GB", "share": 0.15, "presence": {"eu_loyalty": 0.95, "ro_shop": 0.15}},
    "de": {"locale": "de_DE", "country": "DE", "share": 0.15, "presence": {"eu_loyalty": 0.95, "ro_shop": 0.15}},
}

EMAIL_DOMAINS = {
    "UA": ["ukr.net", "gmail.com", "i.ua", "meta.ua"],
    "RO": ["yahoo.ro", "gmail.com", "yahoo.com"],
    "GB": ["gmail.com", "outlook.com", "btinternet.com"],
    "DE": ["web.de", "gmx.de", "gmail.com"],
}

MOBILE_PREFIXES = {
    "UA": ["+38050", "+38063", "+38066", "+38067", "+38068", "+38073", "+38093", "+38097"],
    "RO": ["+4072", "+4073", "+4074", "+4075", "+4076", "+4078"],
    "GB": ["+4474", "+4475", "+4477", "+4478", "+4479"],
    "DE": ["+49151", "+49152", "+49160", "+49170", "+49176"],
}

# Everyday short forms, used only to make noisy demo records.
NICKNAMES = {
    "Олександр": "Сашко",
    "Володимир": "Вова",
    "Дмитро": "Діма",
    "Катерина": "Катя",
    "Анастасія": "Настя",
    "Михайло": "Міша",
    "Олена": "Льона",
    "Андрій": "Андрійко",
    "Александр": "Саша",
    "Дмитрий": "Дима",
    "Екатерина": "Катя",
    "Михаил": "Миша",
    "Владимир": "Вова",
    "Ioan": "Ionel",
    "Gheorghe": "George",
    "Elena": "Ela",
    "Alexandru": "Alex",
    "Constantin": "Costel",
    "William": "Bill",
    "Robert": "Bob",
    "Elizabeth": "Liz",
    "Katherine": "Kate",
    "Thomas": "Tom",
    "Johannes": "Hans",
    "Katharina": "Kathi",
    "Alexander": "Alex",
    "Margarete": "Grete",
}

# Latin spellings of Cyrillic names across conventions: the CRM exports and the EU staff use many.
UKRAINIAN_CONVENTIONS: list[Callable[[str], str]] = [
    lambda s: translitua.translit(s),  # KMU 2010, the national standard
    lambda s: translitua.translit(s, translitua.UkrainianBritish),
    lambda s: translitua.translit(s, translitua.UkrainianGerman),
    lambda s: translitua.translit(s, translitua.UkrainianBGN),
    lambda s: translitua.translit(s, translitua.UkrainianISO9),
    lambda s: translitua.translit(s, translitua.UkrainianPassport2004Alt),
    anyascii,
]
RUSSIAN_CONVENTIONS: list[Callable[[str], str]] = [
    iuliia.WIKIPEDIA.translate,
    iuliia.MOSMETRO.translate,
    iuliia.ICAO_DOC_9303.translate,
    iuliia.BGN_PCGN.translate,
    iuliia.GOST_779.translate,
    iuliia.SCIENTIFIC.translate,
    anyascii,
]

START_OF_EVENTS = datetime(2023, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Person:
    person_id: str
    origin: str
    first_name: str
    middle_name: str | None
    last_name: str
    gender: str
    date_of_birth: date
    email: str
    phone: str  # E.164
    street: str
    city: str
    postcode: str
    country: str
    national_id: str


@dataclass
class DemoSummary:
    people: int
    records: dict[str, int]
    consent_events: dict[str, int]
    corrupt_rows: dict[str, int]


def _strip_diacritics(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


def _latin(text: str, origin: str, rng: random.Random) -> str:
    conventions = UKRAINIAN_CONVENTIONS if origin == "ua" else RUSSIAN_CONVENTIONS
    return rng.choice(conventions)(text)


def _mobile(country: str, rng: random.Random) -> str:
    while True:
        prefix = rng.choice(MOBILE_PREFIXES[country])
        digits = {"UA": 12, "RO": 11, "GB": 12, "DE": 13}[country] - (len(prefix) - 1)
        candidate = prefix + "".join(rng.choice("0123456789") for _ in range(digits))
        parsed = phonenumbers.parse(candidate)
        if phonenumbers.is_valid_number(parsed):
            return candidate


def _render_phone(e164: str, rng: random.Random, record_country: str) -> str:
    """The number as a clerk types it: national format only for a number of the record's own country."""
    parsed = phonenumbers.parse(e164)
    formats = [phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.E164]
    if phonenumbers.region_code_for_number(parsed) == record_country:
        formats.append(phonenumbers.PhoneNumberFormat.NATIONAL)
    fmt = rng.choice(formats)
    return phonenumbers.format_number(parsed, fmt)


def _email_for(first: str, last: str, origin: str, country: str, rng: random.Random) -> str:
    latin_first = _strip_diacritics(_latin(first, origin, rng) if origin in ("ua", "ru") else first)
    latin_last = _strip_diacritics(_latin(last, origin, rng) if origin in ("ua", "ru") else last)
    user = rng.choice(
        [f"{latin_first}.{latin_last}", f"{latin_first[0]}{latin_last}", f"{latin_last}{rng.randint(1, 99)}"]
    )
    user = "".join(c for c in user.lower() if c.isalnum() or c == ".")
    return f"{user}@{rng.choice(EMAIL_DOMAINS[country])}"


class Mailboxes:
    """Addresses handed out so far: like a mail provider, never one mailbox for two people.

    Built from names on a few domains per country, addresses collide once there are tens of thousands of
    people; two people sharing an exact address would be nearly conclusive evidence to any linkage model,
    which no real data gives. A taken address gets the next free number after its user part.
    """

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    def claim(self, address: str, person_id: str) -> str:
        user, domain = address.split("@")
        candidate, number = address, 1
        while self._owners.setdefault(candidate, person_id) != person_id:
            number += 1
            candidate = f"{user}{number}@{domain}"
        return candidate


def _national_id(country: str, dob: date, rng: random.Random) -> str:
    if country == "RO":
        return f"{rng.choice('12')}{dob:%y%m%d}{rng.randint(1, 52):02d}{rng.randint(0, 9999):04d}"
    return "".join(rng.choice("0123456789") for _ in range(10))


def make_people(n: int, seed: int, mailboxes: Mailboxes) -> list[Person]:
    """n people with stable ids, names in their native script, and home contact data (addresses from mailboxes)."""
    rng = random.Random(seed)
    fakers = {o: Faker(spec["locale"]) for o, spec in ORIGINS.items()}
    for i, f in enumerate(fakers.values()):
        f.seed_instance(seed + i)
    origins = list(ORIGINS)
    weights = [ORIGINS[o]["share"] for o in origins]
    people = []
    for i in range(n):
        origin = rng.choices(origins, weights)[0]
        fake, country = fakers[origin], ORIGINS[origin]["country"]
        gender = rng.choice("FM")
        if gender == "F":
            first, last = fake.first_name_female(), fake.last_name_female()
            middle = fake.middle_name_female() if origin in ("ua", "ru") else None
        else:
            first, last = fake.first_name_male(), fake.last_name_male()
            middle = fake.middle_name_male() if origin in ("ua", "ru") else None
        dob = date(1950, 1, 1) + timedelta(days=rng.randint(0, 365 * 55))
        person_id = f"P{i:07d}"
        people.append(
            Person(
                person_id=person_id,
                origin=origin,
                first_name=first,
                middle_name=middle,
                last_name=last,
                gender=gender,
                date_of_birth=dob,
                email=mailboxes.claim(_email_for(first, last, origin, country, rng), person_id),
                phone=_mobile(country, rng),
                street=fake.street_address(),
                city=fake.city(),
                postcode=fake.postcode(),
                country=country,
                national_id=_national_id(country, dob, rng),
            )
        )
    return people


def _typo(s: str, rng: random.Random) -> str:
    if len(s) < 4:
        return s
    i = rng.randrange(1, len(s) - 1)
    op = rng.choice(("swap", "drop", "double"))
    if op == "swap":
        return s[:i] + s[i + 1] + s[i] + s[i + 2 :]
    if op == "drop":
        return s[:i] + s[i + 1 :]
    return s[:i] + s[i] + s[i:]


@dataclass
class Appearance:
    """One source's view of a person, before it is written in that system's layout."""

    person: Person
    first_name: str
    middle_name: str | None
    last_name: str
    email: str | None
    phone: str | None
    street: str | None
    city: str | None
    postcode: str | None
    country: str
    date_of_birth: date | None
    updated_at: datetime


def _appearance(
    p: Person,
    source: str,
    latin: bool,
    rng: random.Random,
    fakers: dict[str, Faker],
    availability: dict[str, float],
    mailboxes: Mailboxes,
) -> Appearance:
    first, middle, last = p.first_name, p.middle_name, p.last_name
    if rng.random() < 0.10 and first in NICKNAMES:
        first = NICKNAMES[first]
    if latin and p.origin in ("ua", "ru"):
        first, last = _latin(first, p.origin, rng), _latin(last, p.origin, rng)
        middle = None
    if latin and p.origin == "ro" and rng.random() < 0.6:
        first, last = _strip_diacritics(first), _strip_diacritics(last)
    if source == "ro_shop" and rng.random() < 0.25:  # legacy cedilla letters instead of comma-below
        first, last = (s.replace("ș", "ş").replace("ț", "ţ").replace("Ș", "Ş").replace("Ț", "Ţ") for s in (first, last))
    if rng.random() < 0.08:
        first = _typo(first, rng)
    if rng.random() < 0.08:
        last = _typo(last, rng)
    if rng.random() < 0.04:
        first, last = last, first
    if rng.random() < 0.03:
        first, last = first.upper(), last.upper()
    email = p.email
    if rng.random() < 0.15:  # a second mailbox of the person's own
        email = mailboxes.claim(_email_for(p.first_name, p.last_name, p.origin, p.country, rng), p.person_id)
    phone = p.phone if rng.random() >= 0.10 else _mobile(p.country, rng)
    street, city, postcode, country = p.street, p.city, p.postcode, p.country
    if rng.random() < 0.12 or (source == "eu_loyalty" and p.country in ("UA", "RO") and rng.random() < 0.5):
        mover = rng.choice(["de", "gb"]) if source == "eu_loyalty" else p.origin
        f = fakers[mover]
        street, city, postcode, country = f.street_address(), f.city(), f.postcode(), ORIGINS[mover]["country"]
    if latin and p.origin in ("ua", "ru") and country == p.country:
        street, city = _latin(street, p.origin, rng), _latin(city, p.origin, rng)

    def keep(field: str, value):
        return value if rng.random() < availability[field] else None

    updated = START_OF_EVENTS + timedelta(seconds=rng.randint(0, 3 * 365 * 86400))
    return Appearance(
        person=p,
        first_name=first,
        middle_name=middle,
        last_name=last,
        email=keep("email", email),
        phone=keep("phone", phone),
        street=keep("address", street),
        city=keep("address", city),
        postcode=keep("address", postcode),
        country=country,
        date_of_birth=keep("dob", p.date_of_birth),
        updated_at=updated,
    )


AVAILABILITY = {
    "ua_crm": {"email": 0.40, "phone": 0.95, "address": 0.80, "dob": 0.92},
    "ro_shop": {"email": 0.98, "phone": 0.80, "address": 0.90, "dob": 0.70},
    "eu_loyalty": {"email": 0.95, "phone": 0.60, "address": 0.70, "dob": 0.85},
}


def _ua_row(rid: str, a: Appearance, rng: random.Random) -> dict[str, str]:
    return {
        "kod_kliienta": rid,
        "prizvyshche": a.last_name,
        "imia": a.first_name,
        "po_batkovi": a.middle_name or "",
        "data_narodzhennia": a.date_of_birth.strftime("%d.%m.%Y") if a.date_of_birth else "",
        "stat": {"F": "ж", "M": "ч"}[a.person.gender],
        "telefon": _render_phone(a.phone, rng, "UA") if a.phone else "",
        "email": a.email or "",
        "adresa": a.street or "",
        "misto": a.city or "",
        "indeks": a.postcode or "",
        "ipn": a.person.national_id if a.person.country == "UA" else "",
        "onovleno": a.updated_at.astimezone(KYIV).strftime("%d.%m.%Y %H:%M"),  # the CRM records local time
    }


def _ro_row(rid: str, a: Appearance, rng: random.Random) -> dict:
    row = {
        "id_client": rid,
        "nume": a.last_name,
        "prenume": a.first_name,
        "data_nasterii": a.date_of_birth.isoformat() if a.date_of_birth else None,
        "sex": a.person.gender,
        "email": a.email,
        "telefon": _render_phone(a.phone, rng, a.country) if a.phone else None,
        "adresa": a.street,
        "oras": a.city,
        "cod_postal": a.postcode,
        "tara": a.country,
        "cnp": a.person.national_id if a.person.country == "RO" else None,
        "actualizat_la": a.updated_at.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="seconds"),
    }
    return {k: v for k, v in row.items() if v is not None}


def _eu_row(rid: str, a: Appearance, rng: random.Random) -> dict:
    return {
        "member_no": rid,
        "given_name": a.first_name,
        "family_name": a.last_name,
        "birth_date": a.date_of_birth.strftime("%d/%m/%Y") if a.date_of_birth else None,
        "email_address": a.email,
        "mobile": _render_phone(a.phone, rng, a.country) if a.phone else None,
        "street": a.street,
        "town": a.city,
        "post_code": a.postcode,
        "country_code": a.country,
        "dietary_health_notes": rng.choice(["lactose intolerant", "diabetic", "coeliac"])
        if rng.random() < 0.05
        else None,
        "last_modified": a.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
    }


SOURCE_LAYOUTS: dict[str, dict] = {
    "ua_crm": {"latin": False, "row": _ua_row, "id": lambda i: f"UA-{1000000 + i}"},
    "ro_shop": {"latin": False, "row": _ro_row, "id": lambda i: str(200000 + i * 7)},
    "eu_loyalty": {"latin": True, "row": _eu_row, "id": lambda i: f"LM{30000000 + i * 13}"},
}


def _consent_events(source: str, rid: str, rng: random.Random, counter: list[int]) -> list[dict]:
    """Consent and lawful-basis events of one source record, as the region's consent platform logs them."""
    tz = timezone(timedelta(hours={"ua_crm": 2, "ro_shop": 2, "eu_loyalty": 1}[source]))
    events: list[dict] = []

    def event(purpose: str, basis: str, status: str, at: datetime, expires: datetime | None = None) -> None:
        counter[0] += 1
        events.append(
            {
                "event_id": f"{source}-ev-{counter[0]}",
                "subject_id": rid,
                "purpose": purpose,
                "lawful_basis": basis,
                "status": status,
                "event_time": at.astimezone(tz).isoformat(timespec="seconds"),
                "recorded_at": (at + timedelta(seconds=rng.randint(1, 3600)))
                .astimezone(UTC)
                .isoformat(timespec="seconds"),
                "method": rng.choice(["web_form", "mobile_app", "in_store", "call_centre"]),
                "notice_version": rng.choice(["v3.1", "v4.0"]),
                "expires_at": expires.astimezone(UTC).isoformat(timespec="seconds") if expires else None,
            }
        )

    t0 = START_OF_EVENTS + timedelta(seconds=rng.randint(0, 2 * 365 * 86400))
    u = rng.random()
    if u < 0.60:
        expires = t0 + timedelta(days=365) if rng.random() < 0.04 else None
        event("profile_unification", "consent", "granted", t0, expires)
        if rng.random() < 0.05:
            event("profile_unification", "consent", "withdrawn", t0 + timedelta(days=rng.randint(1, 300)))
    elif u < 0.90:
        event("profile_unification", "contract", "granted", t0)
    elif u < 0.95:
        event("profile_unification", "consent", "denied", t0)
    m = rng.random()
    if m < 0.45:
        event("marketing_email", "consent", "granted", t0 + timedelta(minutes=1))
        if rng.random() < 0.06:
            event("marketing_email", "consent", "withdrawn", t0 + timedelta(days=rng.randint(1, 300)))
    elif m < 0.65:
        event("marketing_email", "consent", "denied", t0 + timedelta(minutes=1))
    if rng.random() < 0.25:
        event("marketing_sms", "consent", "granted", t0 + timedelta(minutes=2))
    if rng.random() < 0.50:
        event("analytics", "legitimate_interest", "granted", t0)
    if events and rng.random() < 0.02:  # the consent platform replays an event
        events.append(dict(events[0]))
    return events


def _csv_bytes(rows: Sequence[dict[str, str]], delimiter: str, raw_lines: Sequence[bytes] = ()) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode("utf-8") + b"".join(line + b"\n" for line in raw_lines)


def _jsonl_bytes(rows: Sequence[dict], raw_lines: Sequence[bytes] = ()) -> bytes:
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    return text.encode("utf-8") + b"".join(line + b"\n" for line in raw_lines)


def _parquet_bytes(rows: Sequence[dict]) -> bytes:
    columns = list(rows[0])
    content = io.BytesIO()
    pq.write_table(pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in columns}), content)
    return content.getvalue()


def _write_bytes(path: Path, content: bytes) -> None:
    """content as path's, through its draft (jobs.files): an extract is never found half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft_of(path).write_bytes(content)
    replace_durably(draft_of(path), path)


# The rows of a source _corrupt copies its bad rows from (its first n).
CORRUPT_TEMPLATE_ROWS = {"ua_crm": 1, "ro_shop": 2, "eu_loyalty": 4}


def _corrupt(source: str, rows: list[dict]) -> tuple[list[dict], list[str], list[bytes]]:
    """Bad rows a real extract carries, one kind each. Returns rows, kinds, and raw lines to append."""
    if source == "ua_crm":
        good = rows[0]
        # under an id of its own: a copy under the good record's id would quarantine both (duplicate_source_id)
        wrong_count = ";".join([*{**good, "kod_kliienta": "UA-9999989"}.values(), "unexpected", "fields"]).encode()
        bad_encoding = ";".join(v if k != "prizvyshche" else "Ковал" for k, v in good.items())
        bad_encoding = bad_encoding.replace(good["kod_kliienta"], "UA-9999990").encode("utf-8")
        bad_encoding = bad_encoding.replace("Ковал".encode(), b"\xca\xee\xe2\xe0\xeb\xfc")  # cp1251 bytes
        return rows, ["wrong_field_count", "bad_encoding"], [wrong_count, bad_encoding]
    if source == "ro_shop":
        bad_date = {**rows[1], "id_client": "9999991", "data_nasterii": "1990-02-30"}
        return [*rows, bad_date], ["malformed_record", "unparseable_date"], [b'{"id_client": "9999992", "nume": ']
    bad_id = {**rows[2], "member_no": None}
    bad_type = {**rows[3], "member_no": "LM99999993", "last_modified": "yesterday afternoon"}
    return [*rows, bad_id, bad_type], ["missing_source_id", "invalid_type"], []


def _manifest_of(path: Path) -> Path:
    return path.with_name(DEMO_FILES_MANIFEST)


def _read_manifest(manifest: Path) -> dict[str, list[str]]:
    try:
        files = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    except (OSError, ValueError):
        files = None
    if not isinstance(files, dict) or not all(isinstance(v, list) for v in files.values()):
        raise IdresError(f"demo data: {manifest} is not the generator's file list; remove it (nothing was written)")
    return files


def _write_manifests(digests: Mapping[Path, Sequence[str]]) -> None:
    """Per folder, each file's SHA-256s the generator accepts there (the last it wrote, and the next)."""
    folders: dict[Path, dict[str, list[str]]] = {}
    for path, accepted in digests.items():
        folders.setdefault(_manifest_of(path), {})[path.name] = list(dict.fromkeys(accepted))
    for manifest, files in folders.items():
        manifest.parent.mkdir(parents=True, exist_ok=True)
        write_whole(manifest, json.dumps({**_read_manifest(manifest), **files}, indent=1, sort_keys=True) + "\n")


def _current_digest(path: Path) -> str | None:
    """The SHA-256 of the file at path, None when there is none; an IdresError when something else is there."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        with path.open("rb") as content:
            return hashlib.file_digest(content, "sha256").hexdigest()
    except OSError as err:
        raise IdresError(f"demo data: {path} cannot be read ({err.strerror}); nothing was written") from None


def write_demo_files(files: Mapping[Path, bytes]) -> None:
    """Write each file, but only once every one that exists is a file the generator wrote and nobody changed
    since: an IdresError naming the first other one, before anything is written. A source path configured at a
    real extract is never overwritten with demo data.

    Each folder's DEMO_FILES_MANIFEST holds the SHA-256 the generator accepts for each of its files. While the
    files are written it accepts the old and the new content, so a generation that dies midway does not block
    the next, and a file put there since (a real extract) is still refused."""
    current: dict[Path, str | None] = {}
    for path in files:
        current[path] = _current_digest(path)
        if current[path] is not None and current[path] not in _read_manifest(_manifest_of(path)).get(path.name, []):
            raise IdresError(
                f"demo data: {path} exists and is not a file the demo generator wrote (or it changed since), so it "
                "may be a real extract: nothing was written. Generate the demo data elsewhere (--landing, "
                "--ground-truth), or remove the file if it is demo data of an earlier version"
            )
    new = {path: hashlib.sha256(content).hexdigest() for path, content in files.items()}
    _write_manifests({path: [d for d in (current[path], new[path]) if d is not None] for path in files})
    for path, content in files.items():
        _write_bytes(path, content)
    _write_manifests({path: [new[path]] for path in files})


def check_same_generation(cfg: PipelineConfig, truth: bytes, people: int, seed: int) -> None:
    """An IdresError when the lakehouse has ingested demo data of other people (its ground truth differs from
    this generation's): a generation numbers its records from the same ids, so another one gives those ids to
    other people, whose records and consent events would then mix in bronze, the ledger and the profiles with
    the earlier people's."""
    written = cfg.ground_truth / TRUTH_FILE
    if written.is_file() and delta_io.table_exists(cfg.tables.bronze) and written.read_bytes() != truth:
        raise IdresError(
            f"demo data: --people {people} --seed {seed} makes other people than the demo data the lakehouse has "
            "ingested (the ground truth differs), under the same record ids; run `make clean` first (it removes the "
            "lakehouse, landing, models and reports), or generate elsewhere (--landing, --ground-truth) for another "
            "lakehouse. Nothing was written"
        )


def generate(cfg: PipelineConfig, people: int, seed: int = 42, corrupt: bool = False) -> DemoSummary:
    """Write the demo sources, consent feeds and ground truth where the config says they land, over no file the
    generator did not write (write_demo_files), and only the people the lakehouse ingested, if any
    (check_same_generation)."""
    rng = random.Random(seed + 1)
    mailboxes = Mailboxes()
    population = make_people(people, seed, mailboxes)
    fakers = {o: Faker(spec["locale"]) for o, spec in ORIGINS.items()}
    for i, f in enumerate(fakers.values()):
        f.seed_instance(seed + 100 + i)

    per_source: dict[str, list[tuple[Appearance, str]]] = {s: [] for s in SOURCE_LAYOUTS}
    for p in population:
        presence = ORIGINS[p.origin]["presence"]
        chosen = [s for s, prob in presence.items() if rng.random() < prob] or [max(presence, key=presence.get)]
        for source in chosen:
            copies = 2 if rng.random() < 0.06 else 1
            for _ in range(copies):
                a = _appearance(
                    p, source, SOURCE_LAYOUTS[source]["latin"], rng, fakers, AVAILABILITY[source], mailboxes
                )
                per_source[source].append((a, p.person_id))

    # Everything is drawn before a file is written: a population too small fails with the landing as it was.
    truth: list[tuple[str, str, str]] = []
    summary = DemoSummary(people=people, records={}, consent_events={}, corrupt_rows={})
    planned = []
    for source, appearances in per_source.items():
        layout = SOURCE_LAYOUTS[source]
        src_cfg = cfg.source(source)
        rng.shuffle(appearances)
        rows, events, counter = [], [], [0]
        for i, (a, person_id) in enumerate(appearances):
            rid = layout["id"](i)
            rows.append(layout["row"](rid, a, rng))
            events.extend(_consent_events(source, rid, rng, counter))
            truth.append((source, rid, person_id))
        needed = CORRUPT_TEMPLATE_ROWS[source] if corrupt else 1
        if len(rows) < needed or (corrupt and src_cfg.consent_feed is not None and not events):
            raise IdresError(
                f"demo data: --people {people} gives source {source} {len(rows)} record(s) and {len(events)} consent "
                f"event(s); it needs at least {needed} record(s){' and an event' if corrupt else ''}: ask for more "
                "people (nothing was written)"
            )
        kinds: list[str] = []
        raw_lines: list[bytes] = []
        if corrupt:
            rows, kinds, raw_lines = _corrupt(source, rows)
            if src_cfg.consent_feed is not None:  # a purpose the policy does not know, an event time without a zone
                events += [
                    {**events[0], "event_id": f"{source}-bad-1", "purpose": "newsletter"},
                    {**events[0], "event_id": f"{source}-bad-2", "event_time": "2024-05-01T10:00:00"},
                ]
        planned.append((src_cfg, rows, raw_lines, events))
        summary.records[source] = len(appearances)
        summary.consent_events[source] = len(events)
        summary.corrupt_rows[source] = len(kinds)

    files: dict[Path, bytes] = {}
    while planned:  # each source's rows are let go once its files are made
        src_cfg, rows, raw_lines, events = planned.pop(0)
        if src_cfg.format == "csv":
            files[src_cfg.path] = _csv_bytes(rows, src_cfg.delimiter, raw_lines)
        elif src_cfg.format == "jsonl":
            files[src_cfg.path] = _jsonl_bytes(rows, raw_lines)
        else:  # _corrupt gives a Parquet source bad rows, no raw lines
            files[src_cfg.path] = _parquet_bytes(rows)
        if src_cfg.consent_feed is not None:
            files[src_cfg.consent_feed.path] = _jsonl_bytes(events)
    truth_csv = io.StringIO()
    csv.writer(truth_csv).writerows([("source_system", "source_record_id", "person_id"), *sorted(truth)])
    files[cfg.ground_truth / TRUTH_FILE] = truth_csv.getvalue().encode("utf-8")
    check_same_generation(cfg, files[cfg.ground_truth / TRUTH_FILE], people, seed)
    write_demo_files(files)
    return summary


def main(argv: Sequence[str] | None = None) -> DemoSummary | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", help="config directory (default: conf/ of the project)")
    parser.add_argument("--people", type=int, default=2000, help="number of distinct people")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--corrupt", action="store_true", help="append known-bad rows to every source")
    parser.add_argument("--landing", help="write the sources under this folder instead of the configured one")
    parser.add_argument("--ground-truth", help="write the ground truth under this folder")
    args = parser.parse_args(argv)
    if args.people == 0:
        print("demo data: skipped (--people 0); the landing zone is left as it is")
        return None
    try:
        cfg = load_config(args.conf).with_paths(landing=args.landing, ground_truth=args.ground_truth)
        with lakehouse_lock(cfg, "demo_data"):  # an ingest holding it never reads an extract half rewritten
            summary = generate(cfg, people=args.people, seed=args.seed, corrupt=args.corrupt)
    except IdresError as error:  # a config problem, the lock held past its timeout: exit 2 naming it, as every job
        print(f"demo_data failed: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"demo data: {summary.people} people -> " + ", ".join(f"{s}={n}" for s, n in summary.records.items()))
    return summary


if __name__ == "__main__":
    main()
