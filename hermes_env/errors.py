"""Errors raised on bad input. Every message names the field at fault and how to fix it."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration, PDGraph or distribution spec is invalid.

    ``field`` is a dotted path to the offending entry (``stages[2].next[0].p``), so that a
    user can find it in a YAML file; the message says what is wrong and what would be valid.
    """

    def __init__(self, field: str, problem: str, fix: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        text = f"{field}: {problem}"
        if fix:
            text += f" ({fix})"
        super().__init__(text)

    def __reduce__(self) -> tuple:  # so that it crosses process and Ray boundaries intact
        return ConfigError, (self.field, self.problem, self.fix)


def require(condition: bool, field: str, problem: str, fix: str | None = None) -> None:
    """Raise :class:`ConfigError` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(field, problem, fix)
