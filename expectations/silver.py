"""silver/customers: standardized records, valid formats for the key fields, no sensitive columns."""

from __future__ import annotations

from datetime import date

import great_expectations as gx
import pycountry
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expectations import QualityInputs, TableCheck, equal_columns, in_set, required_unique
from jobs.canonical import E164, EARLIEST_BIRTH_DATE, END_OF_TEXT, SUBJECT, WHITESPACE

EMAIL = rf"^[^@{WHITESPACE}]+@[^@{WHITESPACE}]+\.[^@{WHITESPACE}]+{END_OF_TEXT}"
COUNTRY_CODES = [c.alpha_2 for c in pycountry.countries]


def record_counts(bronze: DataFrame, silver: DataFrame) -> DataFrame:
    """One row: `bronze_records` (distinct source records in bronze, which keeps every version), `silver_records`
    (silver's rows) and `silver_records_in_bronze` (those that are a record in bronze). Standardize keeps one row
    per bronze record and an erasure deletes a subject from both, so all three are equal: a record dropped and
    another that bronze lacks would leave the first two equal."""
    in_bronze = silver.join(bronze.select(*SUBJECT).distinct(), list(SUBJECT), "left_semi")
    return (
        bronze.agg(F.count_distinct(*SUBJECT).alias("bronze_records"))
        .crossJoin(silver.agg(F.count("*").alias("silver_records")))
        .crossJoin(in_bronze.agg(F.count("*").alias("silver_records_in_bronze")))
    )


def checks(inputs: QualityInputs) -> list[TableCheck]:
    expect = gx.expectations
    held = inputs.cfg.policy.silver_columns
    # The format of each key field silver holds under the policy (one the policy keeps out, such as a date of
    # birth named sensitive, is not there to check).
    formats = {
        "phone": expect.ExpectColumnValuesToMatchRegex(column="phone", regex=E164, description="phones in E.164"),
        "email": expect.ExpectColumnValuesToMatchRegex(column="email", regex=EMAIL, description="emails are addresses"),
        "country": in_set("country", COUNTRY_CODES, "countries are ISO 3166-1 alpha-2 codes"),
        "date_of_birth": expect.ExpectColumnValuesToBeBetween(
            column="date_of_birth",
            min_value=EARLIEST_BIRTH_DATE,
            max_value=date.today(),
            description="dates of birth are real past dates",
        ),
    }
    return [
        TableCheck(
            suite="silver",
            table="silver/customers",
            frame=inputs.silver,
            expectations=[
                *required_unique("source_system", "source_record_id", description="one row per source record"),
                in_set("source_system", [s.name for s in inputs.cfg.sources], "a configured source"),
                *(check for column, check in formats.items() if column in held),
                # Sensitive attributes never leave bronze, and a pseudonym is there only when the policy enables
                # it: the silver columns must be exactly those the policy lets silver hold.
                expect.ExpectTableColumnsToMatchSet(
                    column_set=held, exact_match=True, description="no sensitive attribute in silver"
                ),
            ],
        ),
        TableCheck(
            suite="silver_reconciliation",
            table="silver/customers",
            frame=record_counts(inputs.bronze, inputs.silver),
            expectations=[
                equal_columns(
                    "bronze_records",
                    "silver_records",
                    "silver holds one row per source record in bronze (none dropped)",
                ),
                equal_columns("silver_records", "silver_records_in_bronze", "every silver row is a record in bronze"),
            ],
        ),
    ]
