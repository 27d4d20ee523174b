"""Project exceptions. Each names the offending file, key, source or column, never a data value."""

from __future__ import annotations


class IdresError(ValueError):
    """Base class for every error this project raises on purpose."""


class ConfigError(IdresError):
    """One or more configuration problems, all reported at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            f"{len(self.problems)} configuration problem(s):\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


class SourceSchemaError(IdresError):
    """A source file is missing or its columns do not match the configured mapping."""

    def __init__(self, source: str, detail: str) -> None:
        self.source = source
        super().__init__(f"source '{source}': {detail}")


class ModelError(IdresError):
    """A saved Splink model does not fit the configured settings or engine."""

    def __init__(self, version: str, detail: str) -> None:
        self.version = version
        super().__init__(f"Splink model '{version}': {detail}")
